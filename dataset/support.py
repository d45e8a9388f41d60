"""Which support images a seed list names (the authors' `<k>-shot.txt` format: lines `a-<i>:` and
`n-<i>:`). Torch-free, so that the data checks run before torch is imported."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from .layouts import ABNORMAL, DataError, Record


def read_seed_list(path: Path, kind: str, iterate: int) -> List[str]:
    """The file names on the `<kind>-<iterate>:` line of a seed list (kind 'a' abnormal, 'n' normal)."""
    tag = f'{kind}-{iterate}:'
    with open(path, encoding='utf-8') as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == tag:
                return fields[1:]
    raise DataError(f"{path} has no line '{tag}': pick an --iterate that the file lists")


def listed_support(pool: Sequence[Record], source: str, shot: int, iterate: int, seed_list: Path,
                   label: int) -> Optional[List[Record]]:
    """The `shot` support images of `pool` that the seed list names on its line for `label` and
    `iterate`; None when they are drawn at random instead (`iterate` < 0 or no list)."""
    if iterate < 0 or not seed_list.is_file():
        return None
    kind = 'a' if label == ABNORMAL else 'n'
    by_name = {record.name: record for record in pool}
    names = read_seed_list(seed_list, kind, iterate)[:shot]
    missing = [name for name in names if name not in by_name]
    if missing:
        raise DataError(f'{seed_list} line {kind}-{iterate} names images missing from {source}: '
                        f'{", ".join(missing)}; fix the list or pass --fewshot_seed_dir')
    check_support_size(len(names), shot, f'{seed_list} line {kind}-{iterate}')
    return [by_name[name] for name in names]


def check_support_size(found: int, shot: int, source: str) -> None:
    if found < shot:
        raise DataError(f'--shot {shot} needs {shot} support images, {source} has {found}: use a smaller --shot')
