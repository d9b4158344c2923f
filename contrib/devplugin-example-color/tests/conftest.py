"""The fixtures of devplugin-host's testing kit: kubelet, fake_sysfs, run_host."""

pytest_plugins = ["host.testing"]
