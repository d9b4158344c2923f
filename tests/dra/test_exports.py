"""host.dra's public names."""

from __future__ import annotations

import host.dra


class TestPublicSurface:
    def test_all_is_pinned(self) -> None:
        """host.dra exports the driver, the claim types and the slice builders."""
        assert set(host.dra.__all__) >= {
            "DEFAULT_DRA_PLUGIN_DIR",
            "DEFAULT_REGISTRY_DIR",
            "SUPPORTED_VERSIONS",
            "ClaimError",
            "ClaimNotFoundError",
            "ClaimRef",
            "ClaimSource",
            "DeviceNamer",
            "DraDriver",
            "DraOptions",
            "DraPlugin",
            "KubeClaimSource",
            "PreparedClaim",
            "PreparedDevice",
            "build_dra_plugins",
        }
        for name in host.dra.__all__:
            assert getattr(host.dra, name) is not None
