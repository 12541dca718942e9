"""A deterministic answer for tweets the model could not mask: every word masked."""


def mask_all(row: dict) -> str:
    return " ".join("[MASK]" for _ in row["text"].split())
