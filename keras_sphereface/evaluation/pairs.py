"""Pair lists in the LFW `pairs.txt` format (View 2), parsed and validated.

Format: a header `FOLDS PAIRS_PER_FOLD` (LFW: `10 300`), then FOLDS blocks, each made of
PAIRS_PER_FOLD matched lines `name i j` followed by PAIRS_PER_FOLD mismatched lines
`name1 i name2 j` (tab- or space-separated). Image (name, i) is `name/name_%04d.jpg`
relative to the images folder (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49).

Every problem (a malformed line, a block with the wrong kind or number of lines, a missing
image) is a `UserInputError` naming the file and the line.
"""

import dataclasses
import os

import numpy as np

from keras_sphereface.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class PairList:
    """Verification pairs: image paths relative to the images folder, labels and folds."""

    left: tuple  # relative image path of the first image of each pair
    right: tuple  # relative image path of the second image
    is_same: np.ndarray  # bool [num_pairs]: True for a matched (same person) pair
    folds: np.ndarray  # int [num_pairs]: fold index 0..num_folds-1
    num_folds: int
    pairs_per_fold: int  # matched pairs per fold (= mismatched pairs per fold)
    line_numbers: tuple  # 1-based line of each pair in the file, for error messages

    def __len__(self):
        return len(self.left)

    @property
    def image_paths(self):
        """The distinct relative image paths, sorted."""
        return sorted(set(self.left) | set(self.right))


def image_relpath(name, index):
    """`name/name_%04d.jpg`: the LFW file of image number `index` (1-based) of `name`."""
    return f"{name}/{name}_{index:04d}.jpg"


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def read_pairs(path, images_dir=None):
    """Parse and validate a pair list; with `images_dir`, also check that every image exists.

    Returns a `PairList`. Raises `UserInputError` naming the file and line number.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f"Expected an existing pair list file. Received: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"{path}: expected a text pair list ('FOLDS PAIRS_PER_FOLD' header, then "
            f"'name i j' / 'name1 i name2 j' lines). Received: a binary file ({error.reason} "
            f"at byte {error.start})"
        ) from None
    numbered = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise UserInputError(
            f"{path}: expected a header line 'FOLDS PAIRS_PER_FOLD' (LFW: '10 300'). "
            f"Received: an empty file"
        )
    header_line, header = numbered[0]
    try:
        if len(header) != 2:
            raise ValueError
        num_folds, per_fold = (_positive_int(v) for v in header)
    except ValueError:
        raise UserInputError(
            f"{path}, line {header_line}: expected a header 'FOLDS PAIRS_PER_FOLD' of two "
            f"positive integers (LFW: '10 300'). Received: {lines[header_line - 1]!r}"
        ) from None

    body = numbered[1:]
    expected = num_folds * 2 * per_fold
    if len(body) != expected:
        raise UserInputError(
            f"{path}: the header (line {header_line}) says {num_folds} folds of {per_fold} "
            f"matched + {per_fold} mismatched pairs, so expected {expected} pair lines. "
            f"Received: {len(body)} pair lines"
        )

    left, right, is_same, folds, line_numbers = [], [], [], [], []
    for position, (number, fields) in enumerate(body):
        fold, within = divmod(position, 2 * per_fold)
        matched = within < per_fold
        try:
            if matched:
                if len(fields) != 3:
                    raise ValueError
                name, i, j = fields
                pair = image_relpath(name, _positive_int(i)), image_relpath(name, _positive_int(j))
            else:
                if len(fields) != 4:
                    raise ValueError
                name1, i, name2, j = fields
                pair = (
                    image_relpath(name1, _positive_int(i)),
                    image_relpath(name2, _positive_int(j)),
                )
        except ValueError:
            kind, form = (
                ("matched", "'name i j'") if matched else ("mismatched", "'name1 i name2 j'")
            )
            raise UserInputError(
                f"{path}, line {number}: fold {fold + 1}, pair {within + 1} of {2 * per_fold} "
                f"must be a {kind} pair {form} with positive integer indices (each fold holds "
                f"{per_fold} matched then {per_fold} mismatched lines). "
                f"Received: {lines[number - 1]!r}"
            ) from None
        left.append(pair[0])
        right.append(pair[1])
        is_same.append(matched)
        folds.append(fold)
        line_numbers.append(number)

    pairs = PairList(
        left=tuple(left),
        right=tuple(right),
        is_same=np.array(is_same, dtype=bool),
        folds=np.array(folds, dtype=np.int64),
        num_folds=num_folds,
        pairs_per_fold=per_fold,
        line_numbers=tuple(line_numbers),
    )
    if images_dir is not None:
        check_images_exist(pairs, images_dir, path)
    return pairs


def check_images_exist(pairs, images_dir, pairs_path="pair list"):
    """Raise `UserInputError` naming the first line whose image is missing under `images_dir`."""
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise UserInputError(f"Expected an existing images folder. Received: {images_dir}")
    known = {}
    for number, first, second in zip(pairs.line_numbers, pairs.left, pairs.right):
        for relpath in (first, second):
            if relpath not in known:
                known[relpath] = os.path.isfile(os.path.join(images_dir, relpath))
            if not known[relpath]:
                raise UserInputError(
                    f"{pairs_path}, line {number}: expected the image "
                    f"{os.path.join(images_dir, relpath)} to exist. Received: no such file"
                )
