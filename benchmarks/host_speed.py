"""How fast this machine is right now: 50 float32 1024 x 1024 matrix products on torch's threads.

A shared (virtual) machine's speed drifts; a timing written down beside this probe's reading,
taken just before and after, says which state of the machine it was measured in."""

import argparse
import time

import torch


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):  # warm-up
        a @ b
    start = time.perf_counter()
    for _ in range(50):
        a @ b
    print(f"host speed: 50 float32 1024x1024 matrix products in {time.perf_counter() - start:.3f} s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
