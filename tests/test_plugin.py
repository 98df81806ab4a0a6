"""The installed start-up hook: the stock lm-eval finds masked-hf and our tasks, nothing else changes."""

import json
import subprocess
import sys
from pathlib import Path

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def run_python(code: str, **env) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_startup_is_light_and_registers_lazily():
    result = run_python(
        "import sys, json; "
        "light = 'torch' not in sys.modules and 'lm_eval' not in sys.modules; "
        "from lm_eval.api.registry import get_model; "
        "names = [get_model(n).__name__ for n in ('masked-hf', 'hf', 'steered')]; "
        "print(json.dumps({'hook': 'culnig_lm_eval._startup' in sys.modules, 'light': light, 'names': names}))"
    )
    assert result == {"hook": True, "light": True, "names": ["MaskedHFLM", "HFLM", "SteeredModel"]}


def test_task_manager_indexes_our_folder_once_and_can_be_switched_off():
    code = (
        "import json; from lm_eval.tasks import TaskManager; "
        f"a = TaskManager(); b = TaskManager(include_path={str(TASKS)!r}); "
        "print(json.dumps({'default': [str(p) for p in a.include_path], 'explicit': [str(p) for p in b.include_path], "
        "'blend': 'blend_cloze_test' in a.all_tasks and 'crc' in a.all_tasks and 'general_ppl' in a.all_tasks, "
        "'stock': 'hellaswag' in a.all_tasks}))"
    )
    result = run_python(code)
    assert result["default"] == [str(TASKS)]
    assert result["explicit"] == [str(TASKS)]  # --include_path on the same folder: indexed once
    assert result["blend"] and result["stock"]
    off = run_python(
        "import json, sys; from lm_eval.api.registry import get_model\n"
        "try:\n get_model('masked-hf'); found = True\nexcept ValueError:\n found = False\n"
        "print(json.dumps({'found': found}))",
        CULNIG_LM_EVAL_DISABLE="1",
    )
    assert off == {"found": False}


def test_a_broken_hook_warns_once_and_leaves_stock_lm_eval_working():
    import os

    code = (
        "import json, culnig_lm_eval._startup as s\n"
        "def broken(module): raise RuntimeError('boom')\n"
        "s.AFTER_IMPORT['lm_eval.tasks.manager'] = broken\n"
        "s.AFTER_IMPORT['lm_eval.models'] = broken\n"
        "import lm_eval; from lm_eval.tasks import TaskManager; from lm_eval.api.registry import get_model\n"
        "tm = TaskManager()\n"
        "print(json.dumps({'stock': 'hellaswag' in tm.all_tasks, 'hf': get_model('hf').__name__}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ), check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"stock": True, "hf": "HFLM"}
    assert out.stderr.count("culnig-lm-eval disabled: ") == 1
    assert "boom" in out.stderr and "Traceback" not in out.stderr


def test_positional_include_path_and_stock_hf_only_guarded():
    code = (
        "import json; from lm_eval.tasks import TaskManager; from lm_eval.models.huggingface import HFLM\n"
        f"tm = TaskManager('INFO', {str(TASKS / 'crc')!r})\n"
        "print(json.dumps({'paths': [str(p) for p in tm.include_path], 'crc': 'crc' in tm.all_tasks, "
        "'hf_guarded': getattr(HFLM.__init__, '_culnig', False), 'torch': 'torch' in __import__('sys').modules}))"
    )
    result = run_python(code)
    # hf's __init__ only refuses an embedded alias (test_bad_input_commands), which is all it changes
    assert result == {"paths": [str(TASKS), str(TASKS / "crc")], "crc": True, "hf_guarded": True, "torch": True}


def test_masked_hf_is_an_lm_eval_models_entry_point():
    """lm-eval after 0.4.13 discovers models through the ``lm_eval.models`` entry-point group."""
    import tomllib
    from importlib.metadata import entry_points

    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    pyproject = tomllib.loads((TASKS.parent / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["lm_eval.models"]
    assert declared == {"masked-hf": "culnig_lm_eval.model.masked_hf:MaskedHFLM"}
    installed = {e.name: e for e in entry_points(group="lm_eval.models")}
    assert "masked-hf" in installed, "reinstall (pip install -e .) so that the installed metadata has the entry point"
    assert installed["masked-hf"].value == declared["masked-hf"]
    assert installed["masked-hf"].load() is MaskedHFLM
