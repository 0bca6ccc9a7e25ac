"""A tiny pcap reader (standard library only), enough to count what a TcpDumpAgent capture holds.

``read_pcap(path)`` yields one ``Packet`` per record: its time, and when it is IPv4/IPv6 its addresses, its
protocol and, for TCP/UDP, its ports and payload. It reads the classic pcap format that tcpdump writes (both
byte orders, micro- and nanosecond timestamps) with the link types tcpdump produces on Linux: Ethernet, raw IP,
Linux cooked v1 and v2 (``-i any``) and BSD loopback. pcapng files are refused with a clear error.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

__all__ = ["Packet", "PcapError", "http_request_lines", "read_pcap"]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG = b"\x0a\x0d\x0d\x0a"
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = (0x8100, 0x88A8)
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}
# IPv6 extension headers we step over to find TCP/UDP: hop-by-hop, routing, destination options.
_IPV6_EXTENSIONS = (0, 43, 60)


class PcapError(ValueError):
    """The file is not a pcap file this reader understands, or it is cut short in its header."""


@dataclass(frozen=True)
class Packet:
    """One captured packet; address fields are None when it is not IP (ARP, for instance)."""

    time: float
    length: int  # on the wire
    captured: int  # in the file (at most the snapshot length)
    src: Optional[str] = None
    dst: Optional[str] = None
    protocol: Optional[str] = None  # "tcp", "udp", "icmp", "icmp6" or the IP protocol number as text
    sport: Optional[int] = None
    dport: Optional[int] = None
    payload: bytes = b""  # TCP/UDP payload (as much as was captured)

    def between(self, a: str, b: str) -> bool:
        """True when the packet goes from a to b or from b to a."""
        return {self.src, self.dst} == {a, b}

    def uses_port(self, port: int) -> bool:
        return port in (self.sport, self.dport)


def read_pcap(source: Union[str, Path, BinaryIO]) -> Iterator[Packet]:
    """The packets of a pcap file, in file order. Raises PcapError on a file that is not pcap.

    A record cut short at the end (tcpdump killed mid-write) ends the iteration quietly, as tcpdump -r does.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            yield from _read(f)
    else:
        yield from _read(source)


def _read(f: BinaryIO) -> Iterator[Packet]:
    header = f.read(24)
    if header[:4] == _PCAPNG:
        raise PcapError("this is a pcapng file; convert it with `tcpdump -r in.pcapng -w out.pcap`")
    if len(header) < 24 or header[:4] not in _MAGIC:
        raise PcapError("not a pcap file (bad magic number)" if len(header) >= 4 else "not a pcap file (too short)")
    order, unit = _MAGIC[header[:4]]
    linktype = struct.unpack(order + "I", header[20:24])[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    while True:
        head = f.read(record.size)
        if len(head) < record.size:
            return
        seconds, fraction, captured, length = record.unpack(head)
        data = f.read(captured)
        if len(data) < captured:
            return
        yield _decode(seconds + fraction * unit, length, data, linktype)


def _network_layer(data: bytes, linktype: int) -> tuple[Optional[int], bytes]:
    """(ethertype, network-layer bytes) for the link types tcpdump writes; (None, b"") for others."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None, b""
        ethertype, offset = struct.unpack(">H", data[12:14])[0], 14
        while ethertype in _ETHERTYPE_VLAN and len(data) >= offset + 4:
            ethertype, offset = struct.unpack(">H", data[offset + 2 : offset + 4])[0], offset + 4
        return ethertype, data[offset:]
    if linktype == LINKTYPE_LINUX_SLL and len(data) >= 16:
        return struct.unpack(">H", data[14:16])[0], data[16:]
    if linktype == LINKTYPE_LINUX_SLL2 and len(data) >= 20:
        return struct.unpack(">H", data[0:2])[0], data[20:]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) and data:
        version = data[0] >> 4
        return {4: _ETHERTYPE_IPV4, 6: _ETHERTYPE_IPV6}.get(version), data
    if linktype == LINKTYPE_NULL and len(data) >= 4:
        family = struct.unpack("<I", data[:4])[0]
        if family > 0xFFFF:  # written by a host of the other byte order
            family = struct.unpack(">I", data[:4])[0]
        version = 4 if family == 2 else 6 if family in (10, 24, 28, 30) else None
        return {4: _ETHERTYPE_IPV4, 6: _ETHERTYPE_IPV6}.get(version or 0), data[4:]
    return None, b""


def _decode(when: float, length: int, data: bytes, linktype: int) -> Packet:
    ethertype, ip = _network_layer(data, linktype)
    base = Packet(time=when, length=length, captured=len(data))
    if ethertype == _ETHERTYPE_IPV4 and len(ip) >= 20 and ip[0] >> 4 == 4:
        header_len = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        fragment = struct.unpack(">H", ip[6:8])[0] & 0x1FFF
        proto = ip[9]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        body = ip[header_len : max(header_len, total)] if total else ip[header_len:]
        if fragment:  # a later fragment carries no transport header
            return _with(base, src, dst, proto, b"")
        return _with(base, src, dst, proto, body)
    if ethertype == _ETHERTYPE_IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        payload_len = struct.unpack(">H", ip[4:6])[0]
        proto = ip[6]
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        body = ip[40 : 40 + payload_len]
        while proto in _IPV6_EXTENSIONS and len(body) >= 8:
            proto, body = body[0], body[(body[1] + 1) * 8 :]
        return _with(base, src, dst, proto, body)
    return base


def _with(base: Packet, src: str, dst: str, proto: int, body: bytes) -> Packet:
    name = PROTOCOLS.get(proto, str(proto))
    sport = dport = None
    payload = b""
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack(">HH", body[:4])
        payload = body[(body[12] >> 4) * 4 :]
    elif proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack(">HH", body[:4])
        payload = body[8:]
    return Packet(
        time=base.time,
        length=base.length,
        captured=base.captured,
        src=src,
        dst=dst,
        protocol=name,
        sport=sport,
        dport=dport,
        payload=payload,
    )


_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def http_request_lines(packets: Iterator[Packet]) -> Iterator[tuple[Packet, str]]:
    """(packet, request line) for each TCP packet whose payload starts an HTTP request, e.g. ``GET /x HTTP/1.1``."""
    for packet in packets:
        if packet.protocol == "tcp" and packet.payload.startswith(_HTTP_METHODS):
            line = packet.payload.split(b"\r\n", 1)[0]
            yield packet, line.decode("latin-1")
