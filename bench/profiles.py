"""py-spy's collapsed stacks read back: the hottest functions of one profile, and what grows
between two profiles of the same work at two sizes (samples per 1,000 pods, per function).

    python -m bench.profiles bench/out/profile-agentcred-1000.txt:1000 bench/out/profile-agentcred-5000.txt:5000

py-spy samples at 100 Hz and leaves idle threads out, so 100 samples are about one CPU-second
of the operator's; a function whose samples per 1,000 pods rise with the burst is where the
cost grows faster than the work.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def read(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """Samples per function: self (the innermost frame), inclusive (anywhere on the stack), total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return own, total, samples


def summarize(raw: Path, summary: Path, top: int = 30) -> None:
    """The functions with the most samples, self and inclusive, into `summary`."""
    own, total, samples = read(raw)
    lines = [f"{samples} samples", "", "self:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)] if samples else []
    lines += ["", "total (inclusive):"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)] if samples else []
    summary.write_text("\n".join(lines) + "\n")


def growth(small: Path, small_n: int, large: Path, large_n: int, top: int = 25) -> list[tuple[str, float, float]]:
    """Per function (inclusive), samples per 1,000 pods at each size, the largest rises first."""
    _, a, _ = read(small)
    _, b, _ = read(large)
    rows = [(frame, a[frame] * 1000 / small_n, b[frame] * 1000 / large_n) for frame in set(a) | set(b)]
    rows.sort(key=lambda row: row[2] - row[1], reverse=True)
    return rows[:top]


USAGE = "usage: python -m bench.profiles PROFILE:PODS PROFILE:PODS  (e.g. out/profile-agentcred-1000.txt:1000)"


def profile_at(arg: str) -> tuple[Path, int]:
    """`path:pods` -> (path, pods); SystemExit naming what is wrong otherwise."""
    path, _, pods = arg.rpartition(":")
    if not path or not pods.isdigit() or int(pods) <= 0:
        raise SystemExit(f"{arg!r}: expected PROFILE:PODS, PODS a positive number\n{USAGE}")
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such profile (bench --profile writes them next to results.json)")
    return Path(path), int(pods)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit(USAGE)
    (small, small_n), (large, large_n) = (profile_at(arg) for arg in argv)
    _, _, samples_a = read(small)
    _, _, samples_b = read(large)
    print(f"samples per 1,000 pods: {samples_a * 1000 / small_n:.0f} at {small_n:,}, "
          f"{samples_b * 1000 / large_n:.0f} at {large_n:,}")  # fmt: skip
    print(f"{'at ' + format(small_n, ','):>10} {'at ' + format(large_n, ','):>10} {'rise':>7}  function (inclusive)")
    for frame, at_small, at_large in growth(small, small_n, large, large_n):
        print(f"{at_small:10.0f} {at_large:10.0f} {at_large - at_small:+7.0f}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
