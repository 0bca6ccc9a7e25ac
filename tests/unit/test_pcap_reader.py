"""examples/pcap_reader.py, checked against pcap files written by dpkt (an independent implementation) and by
hand for what dpkt does not write (big-endian files, truncated records, pcapng)."""

from __future__ import annotations

import importlib.util
import io
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import dpkt
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load_reader() -> ModuleType:
    """examples/pcap_reader.py as the module ``pcap_reader`` (examples/ is not a package)."""
    if "pcap_reader" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pcap_reader", EXAMPLES / "pcap_reader.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pcap_reader"] = module  # before running it: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["pcap_reader"]


reader = _load_reader()

CLIENT, SERVER = "198.18.0.12", "198.18.0.11"
REQUEST = b"GET /bytes/1234 HTTP/1.1\r\nHost: 198.18.0.11:8080\r\n\r\n"


def tcp4(src: str = CLIENT, dst: str = SERVER, sport: int = 40000, dport: int = 8080, data: bytes = b"") -> dpkt.ip.IP:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=data)
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, data=segment)


def udp6(data: bytes = b"hello") -> dpkt.ip6.IP6:
    datagram = dpkt.udp.UDP(sport=5353, dport=53, data=data)
    datagram.ulen = 8 + len(data)
    packet = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        dst=socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
        nxt=dpkt.ip.IP_PROTO_UDP,
        hlim=64,
        data=datagram,
    )
    packet.plen = len(bytes(datagram))
    return packet


def ethernet(ip: dpkt.Packet, ethertype: int = dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=ethertype, data=ip))


def sll(ip: dpkt.Packet, ethertype: int = dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", ethertype) + bytes(ip)


def sll2(ip: dpkt.Packet, ethertype: int = dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    return struct.pack(">HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02" * 6 + b"\0\0") + bytes(ip)


def write(frames: list[bytes], linktype: int, nano: bool = False) -> io.BytesIO:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype, nano=nano)
    for i, frame in enumerate(frames):
        writer.writepkt(frame, ts=1700000000 + i + 0.25)
    out.seek(0)
    return out


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (dpkt.pcap.DLT_EN10MB, ethernet),
        (113, sll),  # tcpdump -i any, libpcap < 1.10
        (276, sll2),  # tcpdump -i any, libpcap >= 1.10 (Debian 12)
        (101, bytes),  # raw IP
    ],
    ids=["ethernet", "linux-sll", "linux-sll2", "raw"],
)
def test_reads_tcp_over_every_link_type_tcpdump_writes(linktype: int, frame: object) -> None:
    frames = [frame(tcp4()), frame(tcp4(data=REQUEST)), frame(tcp4(SERVER, CLIENT, 8080, 40000, b"HTTP/1.0 200"))]
    packets = list(reader.read_pcap(write(frames, linktype)))
    assert len(packets) == 3
    first, request, answer = packets
    assert (first.src, first.dst, first.protocol, first.sport, first.dport) == (CLIENT, SERVER, "tcp", 40000, 8080)
    assert first.payload == b"" and first.time == pytest.approx(1700000000.25)
    assert request.payload == REQUEST and request.length == request.captured == len(frames[1])
    assert answer.between(CLIENT, SERVER) and answer.uses_port(8080) and not answer.uses_port(40001)
    assert [line for _, line in reader.http_request_lines(iter(packets))] == ["GET /bytes/1234 HTTP/1.1"]


def test_ipv6_udp_vlan_and_arp() -> None:
    vlan = b"\x04" * 6 + b"\x02" * 6 + struct.pack(">HH", 0x8100, 42) + struct.pack(">H", 0x0800) + bytes(tcp4())
    arp = ethernet(dpkt.arp.ARP(), ethertype=dpkt.ethernet.ETH_TYPE_ARP)
    packets = list(reader.read_pcap(write([ethernet(udp6(), dpkt.ethernet.ETH_TYPE_IP6), vlan, arp], 1)))
    v6, tagged, other = packets
    assert (v6.src, v6.dst, v6.protocol, v6.sport, v6.dport, v6.payload) == (
        "2001:db8::1",
        "2001:db8::2",
        "udp",
        5353,
        53,
        b"hello",
    )
    assert (tagged.src, tagged.dport) == (CLIENT, 8080)
    assert (other.src, other.protocol) == (None, None)


def test_nanosecond_files_agree_with_dpkt() -> None:
    frames = [ethernet(tcp4(data=b"x" * n)) for n in range(5)]
    data = write(frames, 1, nano=True).getvalue()
    ours = list(reader.read_pcap(io.BytesIO(data)))
    theirs = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert [p.time for p in ours] == pytest.approx([float(ts) for ts, _ in theirs])
    assert [p.payload for p in ours] == [b"x" * n for n in range(5)]


def big_endian_pcap(frames: list[bytes], linktype: int = 1) -> bytes:
    out = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack(">IIII", 100 + i, 500000, len(frame), len(frame)) + frame
    return out


def test_big_endian_files() -> None:
    packets = list(reader.read_pcap(io.BytesIO(big_endian_pcap([ethernet(tcp4(data=REQUEST))]))))
    assert len(packets) == 1 and packets[0].time == 100.5 and packets[0].payload == REQUEST


def test_a_record_cut_short_ends_the_file_quietly(tmp_path: Path) -> None:
    data = write([ethernet(tcp4()), ethernet(tcp4(data=REQUEST))], 1).getvalue()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-10])
    assert len(list(reader.read_pcap(path))) == 1
    path.write_bytes(data[:24])  # header only: what tcpdump writes before the first packet
    assert list(reader.read_pcap(str(path))) == []


def test_snapped_packets_keep_their_wire_length() -> None:
    frame = ethernet(tcp4(data=b"y" * 1000))
    data = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1))
    data += struct.pack("<IIII", 1, 0, 96, len(frame)) + frame[:96]
    (packet,) = reader.read_pcap(io.BytesIO(bytes(data)))
    assert (packet.captured, packet.length, packet.dport) == (96, len(frame), 8080)
    assert packet.payload == b"y" * (96 - 14 - 20 - 20)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x0d\x0d\x0a" + b"\0" * 40, "pcapng"),
        (b"GIF89a" + b"\0" * 40, "bad magic number"),
        (b"\xd4\xc3", "too short"),
    ],
)
def test_not_pcap_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(reader.PcapError, match=message):
        list(reader.read_pcap(io.BytesIO(data)))
