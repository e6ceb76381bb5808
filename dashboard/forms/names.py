"""Shared by the job forms: bounds on what users type, and parsing lists of names."""

from __future__ import annotations

# The web process never imports TensorFlow: variable names are checked against what the run's
# checkpoint rows recorded (and a recipe's declared ``variable_names``); the job checks again
# against the real graph or file and fails with the list of valid names.

RESTORE_CHOICES_SHOWN = 50
KNOWN_NAMES_FROM_CHECKPOINTS = 5
# Far beyond any real Saver setting, and small enough that the number stays a plain int everywhere
# it goes (job params, the Saver, the database).
MAX_TO_KEEP_LIMIT = 10**6
# Node and variable names typed into the freeze form: each one unknown to the graph is fuzzy-matched
# against every node name, in the web process, so how many and how long they may be is bounded.
MAX_TYPED_NAMES = 64
MAX_TYPED_NAME_LENGTH = 256
# Fuzzy matches ("closest: ...") are looked up for this many unknown names; the rest are counted.
FUZZY_MATCHED_NAMES = 5



def file_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a checkpoint file prefix in the run directory, or None.

    Separators of any platform are refused, not only this one's: a ``\\`` is a directory on a
    Windows share of the same storage and reads as a path to every person looking at it.
    """
    if not prefix or prefix in (".", "..") or prefix.startswith("."):
        return "Enter a plain file name that does not start with a dot."
    if any(sep in prefix for sep in ("/", "\\")) or any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        return "Enter a plain file name, without directories (/ or \\) or control characters."
    if prefix == "checkpoint":
        return "“checkpoint” is the state file's name; choose another prefix."
    return None


def _parse_names(text: str) -> list[str]:
    """Variable names, one per line or separated by commas; ``:0`` tensor suffixes dropped."""
    names = []
    for part in text.replace(",", "\n").splitlines():
        name = part.strip()
        if name.endswith(":0"):
            name = name[:-2]
        if name and name not in names:
            names.append(name)
    return names


def _parse_rename(text: str) -> tuple[dict[str, str], list[str]]:
    """``new_name=variable_name`` lines → ({new: old}, errors)."""
    mapping, errors = {}, []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        new, sep, old = (s.strip() for s in line.partition("="))
        old = old[:-2] if old.endswith(":0") else old
        if not sep or not new or not old:
            errors.append(f"Line {number} (“{line}”) is not of the form new_name=variable_name.")
        elif new in mapping:
            errors.append(f"“{new}” is given twice as a new name.")
        else:
            mapping[new] = old
    if not mapping and not errors:
        errors.append("Enter at least one new_name=variable_name line.")
    return mapping, errors


def _unknown(names, known: set[str]) -> str | None:
    unknown = [n for n in names if n not in known]
    if not unknown:
        return None
    return f"Unknown variable name{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}."



def _node(name: str) -> str:
    from persistence.graphsafety import node_name

    return node_name(name)


def _split_names(text: str) -> list[str]:
    """Names separated by commas, spaces or new lines, each once, in order."""
    return list(dict.fromkeys(part for part in text.replace(",", " ").split() if part))


def _typed_names_problem(names: list[str]) -> str | None:
    if len(names) > MAX_TYPED_NAMES:
        return f"At most {MAX_TYPED_NAMES} names, not {len(names)}."
    if any(len(n) > MAX_TYPED_NAME_LENGTH for n in names):
        return f"A name may be at most {MAX_TYPED_NAME_LENGTH} characters long."
    return None


# Enough characters for MAX_TYPED_NAMES names of the longest length and their separators; longer
# text is refused by the field before anything is split or matched.
_TYPED_NAMES_MAX_CHARS = MAX_TYPED_NAMES * (MAX_TYPED_NAME_LENGTH + 2)

