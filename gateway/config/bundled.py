"""Where the policy pack and example tenant registry shipped inside the package live (gateway/policies).

They are package data, found through importlib.resources, so a source tree, an editable install and an
installed wheel all read the same files; EXPORTGATE_POLICY_DIR or `policy:` in gateway.yaml replace them."""

from importlib import resources
from pathlib import Path

BUNDLED_PACK = "ai-diffusion-2025"
BUNDLED_REGISTRY = "tenants.example.yaml"


def bundled_policies() -> Path:
    """The directory holding the bundled pack (`ai-diffusion-2025/`) and registry (`tenants.example.yaml`)."""
    root = resources.files("gateway").joinpath("policies")
    # The pack and registry loaders read real files and name them in their problems. Any installed wheel is
    # unpacked onto the file system, where files() is a Path; from a zip import the path below does not
    # exist, and loading reports "no such directory" naming it, as for any missing pack.
    return root if isinstance(root, Path) else Path(str(root))


BUNDLED_POLICIES = bundled_policies()
