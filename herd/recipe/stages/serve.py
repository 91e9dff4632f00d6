"""serve: the recipe's model behind herd's OpenAI-compatible server (`herd serve`), with the guard's shields.
It runs until stopped, so it makes no artifact and runs only when asked: `herd run RECIPE --serve` starts it once
every other stage is done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from herd.recipe.stage import Done, Input, Stage


@dataclass(kw_only=True, slots=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    shields: bool = True
    """With a guard input: input and output shields (`herd serve --guard`)."""


class Serve(Stage):
    KIND = "serve"
    OUTPUT = "service"
    INPUTS: ClassVar[dict[str, Input]] = {"model": Input(("model",)), "guard": Input(("guard",), optional=True)}
    CODE = ("herd.serve",)
    Settings = ServeSettings
    SERVICE = True

    def command(self, inputs: dict[str, Done]) -> list[str]:
        """The `herd serve` line for the recipe's model (and guard): the CLI runs it after the other stages."""
        s = self.settings
        argv = ["serve", "--model", inputs["model"].main, "--host", s.host, "--port", str(s.port)]
        if s.shields and "guard" in inputs:
            guard = inputs["guard"].main
            argv += ["--guard"] + ([] if guard == "embedded" else [guard])
        return argv
