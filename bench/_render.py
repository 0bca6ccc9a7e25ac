"""What every part of the report shares: labels and colours per tool, number formats, sshfleet ÷ peer ratios."""

from __future__ import annotations

from typing import Any, Optional

LABELS = {
    "sshfleet": "sshfleet",
    "sshfleet-empty-cache": "sshfleet, empty host cache",
    "sshfleet-openssh": "sshfleet, OpenSSH transport",
    "fabric": "Fabric ThreadingGroup",
    "parallel-ssh": "parallel-ssh",
    "asyncssh": "asyncssh",
    "mitogen": "Mitogen",
    "ansible": "Ansible ad-hoc ping",
    "paramiko": "paramiko, defaults",
    "paramiko-seam": "paramiko, sshfleet's cipher/window",
    "openssh": "OpenSSH client",
    "sshfleet-run": "sshfleet run -b",
    "sshfleet-run-live": "sshfleet run (live output)",
    "ssh": "ssh host cmd",
    "clush": "clush -b",
    "pssh": "parallel-ssh -i (Debian pssh)",
    "ansible-adhoc": "ansible -m command",
    "sshfleet-ping": "sshfleet ping",
    "fabric-script": "Fabric script (ThreadingGroup.run)",
    "scp": "scp",
    "sftp": "sftp",
}


# One colour and marker per tool in every panel; sshfleet is the thick red line.
COLORS = {
    "sshfleet": "#d62728",
    "sshfleet-empty-cache": "#ff9896",
    "sshfleet-openssh": "#ff7f0e",
    "fabric": "#2ca02c",
    "parallel-ssh": "#9467bd",
    "asyncssh": "#8c564b",
    "mitogen": "#1f77b4",
    "ansible": "#e377c2",
    "paramiko": "#7f7f7f",
    "paramiko-seam": "#bcbd22",
    "openssh": "#17becf",
    "sshfleet-run": "#d62728",
    "sshfleet-run-live": "#ff9896",
    "ssh": "#17becf",
    "clush": "#9467bd",
    "pssh": "#8c564b",
    "ansible-adhoc": "#e377c2",
    "sshfleet-ping": "#ff7f0e",
    "fabric-script": "#2ca02c",
}


def dig(d: Any, *path: Any) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        digits = 0
    elif abs(value) >= 10:
        digits = min(digits, 1)
    return f"{value:.{digits}f}{unit}"


def ratio_text(ours: Optional[float], theirs: Optional[float]) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2f}x"


def cell(value: Optional[float], ours: Optional[float], unit: str, is_ours: bool) -> str:
    text = fmt(value, unit)
    if value is not None and not is_ours:
        text += f" ({ratio_text(ours, value)})"
    return text


def error_note(entry: Any) -> str:
    errors = (entry or {}).get("errors") or []
    return f" ⚠{len(errors)}" if errors else ""


def sizes_of(results: dict[str, Any], section: str) -> list[str]:
    keys = list((results.get(section) or {}).keys())
    return sorted(keys, key=int)
