"""Find subjects in a BIDS folder or a plain ``<subject>/{T1,FLAIR,wmh}.nii.gz`` folder."""

from __future__ import annotations

from pathlib import Path

from wmhseg.errors import InputImageError
from wmhseg.preprocess.pipeline import SubjectInputs


def _first(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        matches = sorted(folder.glob(pattern))
        if matches:
            return matches[0]
    return None


def _bids_subjects(root: Path) -> list[SubjectInputs]:
    subjects: list[SubjectInputs] = []
    for subject_dir in sorted(root.glob("sub-*")):
        sessions = sorted(subject_dir.glob("ses-*")) or [subject_dir]
        for session in sessions:
            anat = session / "anat"
            if not anat.is_dir():
                continue
            name = (
                subject_dir.name if session == subject_dir else f"{subject_dir.name}_{session.name}"
            )
            t1 = _first(anat, ("*_T1w.nii.gz", "*_T1w.nii"))
            flair = _first(anat, ("*_FLAIR.nii.gz", "*_FLAIR.nii"))
            label_dirs = [root / "derivatives"] if (root / "derivatives").is_dir() else []
            wmh = None
            for derivatives in label_dirs:
                relative = session.relative_to(root) / "anat"
                for candidate in sorted(derivatives.glob(f"*/{relative}/*_mask.nii*")):
                    wmh = candidate
                    break
            if t1 or flair:
                subjects.append(SubjectInputs(name, t1=t1, flair=flair, wmh=wmh))
    return subjects


def _plain_subjects(root: Path) -> list[SubjectInputs]:
    subjects: list[SubjectInputs] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t1 = _first(folder, ("T1.nii.gz", "T1.nii"))
        flair = _first(folder, ("FLAIR.nii.gz", "FLAIR.nii"))
        wmh = _first(folder, ("wmh.nii.gz", "wmh.nii"))
        if t1 or flair:
            subjects.append(SubjectInputs(folder.name, t1=t1, flair=flair, wmh=wmh))
    return subjects


def find_subjects(root: str | Path) -> list[SubjectInputs]:
    """Return the subjects under ``root``, BIDS (``sub-*``) or plain layout.

    In BIDS, each session is its own subject named ``sub-X_ses-Y``; a WMH label is a
    ``*_mask.nii.gz`` in ``derivatives/<pipeline>/`` at the same relative path.

    Raises:
        InputImageError: the folder is missing or contains no subject.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputImageError(root, "input folder not found.")
    subjects = _bids_subjects(root) if any(root.glob("sub-*")) else _plain_subjects(root)
    if not subjects:
        raise InputImageError(
            root,
            "no subjects found. Expected BIDS (sub-*/[ses-*/]anat/*_T1w.nii.gz, *_FLAIR.nii.gz) "
            "or one folder per subject holding T1.nii.gz and/or FLAIR.nii.gz.",
        )
    return subjects
