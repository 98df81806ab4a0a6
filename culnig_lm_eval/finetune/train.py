"""Fine-tune only some modules, evaluating with lm-eval on the same model object every N steps.

The CULNIG reference (``train/train.py``, ``train/config.yaml``) trains the chosen modules fully
(everything else frozen), AdamW at a constant learning rate of 3e-5 without warm-up, batch 4 x 4
gradient-accumulation steps, one epoch over 10,000 QNLI training items (625 updates), with the
loss on the answer token only and a checkpoint every 200 updates.  Those are the defaults here.
Two of its flaws are not copied: it only unfreezes parameters whose names contain
``language_model`` (so on a text-only checkpoint nothing but the substring-matched modules of a
multimodal one would train), and it evaluates checkpoints afterwards with a separate script;
here the chosen modules are matched by exact name on any supported architecture and the
harness evaluates the very model being trained (``HFLM`` wraps the same object), so a curve
point is exactly the model at that step.

Resumption: ``checkpoint.pt`` in the run folder holds the step, the trained tensors (the
chosen modules, or the LoRA adapters), the optimizer state and the curve so far; it is
rewritten atomically at every evaluation.  A run with the same settings, data, modules and
base weights (a sha256 of every parameter as loaded: :func:`weights_sha256`, so another
checkpoint or hub revision behind the same ``--model_args`` is noticed) continues from it; the
data order is a permutation seeded by (seed, epoch), so a resumed run sees the batches an
uninterrupted one would have.  A checkpoint that cannot be read (truncated, or holding Python
objects other than tensors) is refused with one line; ``--force`` starts again.  Multi-GPU: under ``accelerate launch`` the model is wrapped for
data parallelism and each process takes every n-th batch; the harness evaluation runs on all
processes as ``lm_eval`` does under accelerate (untested here: no GPU was available).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write, now_iso, write_text
from ..checks import number_in, whole_number
from ..model.lm import parameter_device
from ..model.states import ReusedTasks
from .examples import Tokenised, batch_order, collate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSettings:
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0


@dataclass
class FinetuneSettings:
    steps: int = 625  # optimizer updates
    batch_size: int = 4
    grad_accum: int = 4
    learning_rate: float = 3e-5
    max_length: int = 512
    eval_every: int = 200
    eval_tasks: list[str] = field(default_factory=lambda: ["blend_test"])
    train_eval_task: str | None = None  # the training task's own evaluation (task accuracy)
    eval_limit: int | None = None
    eval_batch_size: int = 8
    seed: int = 42
    lora: LoraSettings | None = None

    def __post_init__(self):
        def flag(name: str) -> str:  # the setting as its command-line flag
            return f"--{name.replace('_', '-')} {getattr(self, name)!r}"

        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size"):
            whole_number(getattr(self, name), flag(name), least=1)
        whole_number(self.max_length, flag("max_length"), least=2)
        number_in(self.learning_rate, flag("learning_rate"), low=0, low_open=True)
        if self.eval_limit is not None:
            whole_number(self.eval_limit, flag("eval_limit"), least=1)
        if not self.eval_tasks and not self.train_eval_task:
            raise ValueError("--eval-tasks: name at least one task to evaluate")

    @property
    def all_eval_tasks(self) -> list[str]:
        return list(dict.fromkeys(self.eval_tasks + ([self.train_eval_task] if self.train_eval_task else [])))

    def fingerprint(self, data: list[Tokenised], modules: list[str], model_args: str, weights: str = "") -> str:
        """What a checkpoint must match to be resumed: settings, data, module choice and base weights."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"settings": asdict(self), "modules": modules, "model_args": model_args,
                                  "weights": weights}, sort_keys=True, default=str).encode())
        for row in data:
            digest.update(repr((row.ids, row.target_length)).encode())
        return digest.hexdigest()


def weights_sha256(model) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes (tied ones once), as loaded.

    Reads each tensor once (on CPU, one at a time): about a second per GB, small beside a
    fine-tuning run, and it is what tells two checkpoints behind the same name apart."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = param.detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


ACCURACY_METRICS = ("acc", "exact_match")  # the per-item scores a fine-tuning curve follows


def check_accuracy_tasks(tasks: dict, flags: dict[str, str]) -> None:
    """Every loaded task must log a per-item accuracy (``acc`` or ``exact_match``); a perplexity
    task (``general_ppl``) has none.  ``tasks``: leaf name -> Task; ``flags``: requested name ->
    the flag that named it.  Checked before the model loads."""
    for name, task in tasks.items():
        metrics = list(task.aggregation() or {})
        if not any(m in metrics for m in ACCURACY_METRICS):
            where = f"{flags[name]} {name}" if name in flags else f"--eval-tasks {name} (a task of {', '.join(flags)})"
            raise ValueError(f"{where}: logs no per-item accuracy (its metrics: {', '.join(metrics) or 'none'}); "
                             f"the curves need a task with {' or '.join(ACCURACY_METRICS)}, e.g. blend_test")


# -- evaluation ----------------------------------------------------------------------------
def evaluate(lm, tasks: list[str], limit: int | None, reused=None) -> dict[str, dict]:
    """Accuracy per task and per item (for bootstrap bands), through lm-eval on ``lm``.  ``reused``
    (:class:`~culnig_lm_eval.model.states.ReusedTasks`, kept across the evaluations of one run)
    loads each task and builds its requests once."""
    from lm_eval import simple_evaluate

    reused = reused if reused is not None else ReusedTasks()

    model = lm.model
    was_training = model.training
    model.eval()
    try:
        results = simple_evaluate(model=lm, tasks=[reused.get(t) for t in tasks], task_manager=reused.index.manager_for(tasks),
                                  limit=limit, log_samples=True,
                                  bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                  verbosity="ERROR")
    finally:
        model.train(was_training)
    if results is None:  # non-zero ranks under accelerate
        return {}
    out = {}
    for name in tasks:
        leaves = [t for t in results["samples"] if t == name or t in _leaves(results, name)]
        correct, metric = [], None
        for leaf in leaves:
            samples = sorted(results["samples"][leaf], key=lambda s: s["doc_id"])
            metric = metric or next((k for k in ACCURACY_METRICS if samples and k in samples[0]), None)
            if metric is None:
                raise ValueError(f"evaluation task {leaf}: logs no per-item {' or '.join(ACCURACY_METRICS)}")
            correct += [float(s[metric]) for s in samples]
        if not correct:
            raise ValueError(f"evaluation task {name}: no scored items")
        out[name] = {"acc": sum(correct) / len(correct), "items": correct, "metric": metric}
    return out


def _leaves(results: dict, group: str) -> list[str]:
    return list((results.get("group_subtasks") or {}).get(group, []))


# -- training ------------------------------------------------------------------------------
def _target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the target tokens; logits only where targets are predicted."""
    labels = batch["labels"]
    width = int((labels != -100).sum(dim=1).max())  # targets sit at the end (left padding)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=width + 1)
    logits = out.logits[:, -(width + 1):-1, :].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, -width:].reshape(-1),
                                             ignore_index=-100)


def _apply_lora(model, modules: list[str], lora: LoraSettings):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("--lora needs PEFT: pip install 'culnig-lm-eval[finetune]' (or pip install peft)") from None
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=modules)
    # LoRA layers are injected into the model's own modules, so lm.model (the harness' model)
    # computes with them; the PeftModel wrapper is only needed to remove them afterwards.
    return get_peft_model(model, config)


def trained_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


CHECKPOINT_KEYS = ("fingerprint", "step", "tensors", "optimizer", "curve")


def read_checkpoint(path: Path, fingerprint: str | None = None) -> dict | None:
    """``checkpoint.pt`` of a run folder (None when there is none), refused with one line when it
    cannot be read, holds anything but tensors and plain data, or (``fingerprint`` given) belongs
    to another run: other settings, data, modules or base weights."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        return None
    again = "delete it, or use --force to start the run again"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a Python object: never loaded
        raise ValueError(f"{path}: holds Python objects other than tensors, so it was not loaded (a checkpoint "
                         f"of culnig-finetune holds tensors and plain data only); {again}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable checkpoint (truncated or damaged: {first}); {again}") from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise ValueError(f"{path}: not a culnig-finetune checkpoint (expected {', '.join(CHECKPOINT_KEYS)}); {again}")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: a checkpoint of a run with other settings, data, modules or base weights; "
                         "use another --out or --force to start again")
    return state


class Run:
    """One fine-tuning run in ``out``: train, evaluate, checkpoint, resume."""

    def __init__(self, lm, data: list[Tokenised], modules: list[str], settings: FinetuneSettings, out: Path,
                 model_args: str, label: str = "run", baseline: dict | None = None, progress: bool = True,
                 weights: str | None = None):
        """``weights``: :func:`weights_sha256` of the model as loaded (computed here when not given)."""
        self.lm, self.data, self.modules, self.settings = lm, data, modules, settings
        self.out, self.label, self.baseline, self.progress = Path(out), label, baseline, progress
        weights = weights if weights is not None else weights_sha256(lm.model)
        self.fingerprint = settings.fingerprint(data, modules, model_args, weights)
        self.model_args = model_args

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _load_checkpoint(self) -> dict | None:
        return read_checkpoint(self.checkpoint_path, self.fingerprint)

    def _save(self, step: int, optimizer, curve: list[dict], model):
        state = {"fingerprint": self.fingerprint, "step": step, "tensors": trained_tensors(model),
                 "optimizer": optimizer.state_dict(), "curve": json.dumps(curve)}
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))
        self._write_curve(curve, done=step >= self.settings.steps)

    def _write_curve(self, curve: list[dict], done: bool):
        body = {"label": self.label, "modules": self.modules, "settings": asdict(self.settings),
                "model_args": self.model_args, "done": done, "written": now_iso(), "curve": curve}
        write_text(self.out / "curve.json", json.dumps(body, indent=1))

    def run(self, force: bool = False) -> list[dict]:
        from accelerate import Accelerator
        from tqdm.auto import tqdm

        from .modules import parameter_names_of, trainable_only

        settings, lm = self.settings, self.lm
        self.out.mkdir(parents=True, exist_ok=True)
        if force:
            self.checkpoint_path.unlink(missing_ok=True)
        state = self._load_checkpoint()
        if state is not None and state["step"] >= settings.steps:
            return json.loads(state["curve"])
        model = lm.model
        peft_model = None
        if settings.lora:
            peft_model = _apply_lora(model, self.modules, settings.lora)
        else:
            trainable_only(model, parameter_names_of(model, self.modules))
        try:
            curve = self._train(model, state, ReusedTasks(), Accelerator(), tqdm)
        finally:
            if peft_model is not None:
                peft_model.unload()  # the model is as loaded again (LoRA layers removed, not merged)
            for p in model.parameters():
                p.requires_grad_(False)
        return curve

    def _train(self, model, state, manager, accelerator, tqdm) -> list[dict]:
        settings = self.settings
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
        step, curve = 0, []
        if state is not None:
            named = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in state["tensors"].items():
                    named[name].copy_(tensor)
            optimizer.load_state_dict(state["optimizer"])
            step, curve = state["step"], json.loads(state["curve"])
        wrapped = accelerator.prepare_model(model) if accelerator.num_processes > 1 else model
        device = parameter_device(model)
        pad_id = self.lm.tokenizer.pad_token_id if self.lm.tokenizer.pad_token_id is not None else 0
        if step == 0 and not curve:
            curve.append({"step": 0, **self._evaluate_or_baseline(manager)})
            self._save(0, optimizer, curve, model)
        batches = self._batches(step, accelerator)
        model.train()
        bar = tqdm(total=settings.steps, initial=step, desc=f"fine-tune {self.label}", disable=not self.progress
                   or not accelerator.is_main_process, dynamic_ncols=True)
        try:
            while step < settings.steps:
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for _ in range(settings.grad_accum):
                    batch = {k: v.to(device) for k, v in collate(next(batches), pad_id).items()}
                    loss = _target_loss(wrapped, batch) / settings.grad_accum
                    if not torch.isfinite(loss):
                        raise ValueError(f"fine-tune {self.label}: the loss became {loss.item()} at step "
                                                 f"{step + 1}; lower --learning-rate")
                    accelerator.backward(loss)
                    total += loss.item()
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
                if step % settings.eval_every == 0 or step == settings.steps:
                    curve.append({"step": step, "loss": total, **self._evaluate(manager)})
                    self._save(step, optimizer, curve, model)
        finally:
            bar.close()
            model.eval()
        return curve

    def _evaluate_or_baseline(self, manager) -> dict:
        if self.baseline is not None:
            return self.baseline
        return self._evaluate(manager)

    def _evaluate(self, manager) -> dict:
        return {"tasks": evaluate(self.lm, self.settings.all_eval_tasks, self.settings.eval_limit, manager)}

    def _batches(self, step: int, accelerator):
        """Micro-batches from update ``step`` on (the same sequence a run from 0 would reach)."""
        settings = self.settings
        per_update = settings.grad_accum * accelerator.num_processes
        consumed = step * per_update
        epoch = 0
        while True:
            order = batch_order(len(self.data), settings.batch_size, settings.seed, epoch)
            for i, indices in enumerate(order):
                if consumed > 0:
                    consumed -= 1
                    continue
                if i % accelerator.num_processes == accelerator.process_index:
                    yield [self.data[j] for j in indices]
            epoch += 1

