"""The boot-decision core (docs/architecture.md): `decide.BootCore` answers every edge through the
interfaces in `interfaces`; `plan` derives what a machine boots; `loaders` carry a plan to the
firmware. Import from the submodules: this package's __init__ imports nothing, so a loader or the
configuration loader can import one part without the rest."""
