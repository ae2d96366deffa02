"""The boot-decision core. Edges import `BootCore` from here."""

from netbootd.core.decide import BootCore, Decision, NoScript

__all__ = ["BootCore", "Decision", "NoScript"]
