"""What the model sees each iteration (edit freely; default in the package)."""

from ratchetloop.generic.prompting import build_prompt


def build(context: dict) -> str:
    return build_prompt(context)
