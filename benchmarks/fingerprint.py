"""What machine a benchmark ran on: CPU, cores, OS, runtime, Raspberry Pi model, governor, Edge TPU."""

from __future__ import annotations

import glob
import os
import platform
import re

from edgeseg.machine import SIMD_FLAGS, cpu_features, cpu_model, read_quietly  # noqa: F401 (re-exported)


def edgetpu_present() -> bool:
    """A PCIe/M.2 Coral (/dev/apex_*) or a USB Accelerator (vendor 1a6e or 18d1:9302)."""
    if glob.glob("/dev/apex_*"):
        return True
    for vendor_file in glob.glob("/sys/bus/usb/devices/*/idVendor"):
        vendor = read_quietly(vendor_file)
        product = read_quietly(vendor_file.replace("idVendor", "idProduct"))
        if vendor == "1a6e" or (vendor == "18d1" and product == "9302"):
            return True
    return False


def fingerprint(device_name: str | None = None) -> dict:
    """Device facts recorded beside every result (latency means nothing without them)."""
    from edgeseg.backend import find_runtime

    runtime = find_runtime()
    governor = read_quietly("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    pi_model = read_quietly("/proc/device-tree/model")
    facts = {
        "device": device_name or (pi_model or platform.node() or "unknown"),
        "cpu": cpu_model(),
        "simd": cpu_features(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtime": f"{runtime.name} {runtime.version}",
        "pi_model": pi_model,
        "governor": governor,
        "edgetpu": edgetpu_present(),
    }
    return facts


def governor_warning(facts: dict) -> str | None:
    governor = facts.get("governor")
    if governor and governor != "performance":
        return (f"CPU governor is '{governor}', not 'performance': latencies will vary. For stable numbers run"
                " `echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor`")
    return None


def slug(name: str) -> str:
    """A file-name-safe device name (results/<slug>.jsonl)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
