"""placeholder"""


def build(context: dict) -> str:
    return ""
