"""placeholder"""

def check(source: str) -> list[str]:
    return []
