"""The address check, without any traffic: which addresses a manifest URL may reach."""

import socket

import pytest

from capmill.errors import InputRefused
from capmill.fetch import FetchConfig, fetch, refusal, resolve
from capmill.testing.netns import ConnectionLog


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1",                      # loopback
    "169.254.169.254", "169.254.170.2", "fe80::1",         # link-local: cloud metadata, ECS credentials
    "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "fd00:ec2::254",  # private
    "100.64.0.1",                                          # carrier-grade NAT
    "0.0.0.0", "::",                                       # unspecified
    "224.0.0.1", "ff02::1",                                # multicast
    "240.0.0.1", "255.255.255.255",                        # reserved, broadcast
    "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",        # IPv4-mapped, NAT64
    "2002:a9fe:a9fe::1",                                   # 6to4 around a link-local address
    "fe80::1%lo",                                          # with a zone
])
def test_non_public_addresses_are_refused(address):
    reason = refusal(address)
    assert reason is not None and "refused unless fetch.allow_networks" in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2002:5db8:d70e::1"])
def test_public_addresses_pass(address):
    assert refusal(address) is None


def test_allowed_networks_open_exactly_what_they_name():
    allowed = ("127.0.0.0/8", "10.20.0.0/16")
    assert refusal("127.0.0.1", allowed) is None and refusal("10.20.3.4", allowed) is None
    assert refusal("10.21.0.1", allowed) is not None and refusal("169.254.169.254", allowed) is not None
    assert refusal("::ffff:10.20.3.4", allowed) is None  # the IPv4 it carries is allowed


def test_names_are_checked_on_every_address_they_resolve_to(monkeypatch):
    answers = {"public.test": ["93.184.215.14"], "mixed.test": ["93.184.215.14", "10.0.0.7"]}

    def fake_getaddrinfo(host, port, *args, **kwargs):  # test double for DNS: no resolver traffic
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert resolve("public.test", 80) == ["93.184.215.14"]
    with pytest.raises(InputRefused, match=r"mixed.test -> 10.0.0.7 is a private address"):
        resolve("mixed.test", 80)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://2852039166/",          # 169.254.169.254 written as one number
    "http://0x7f.1/",              # 127.0.0.1 in hex shorthand
    "http://localhost/x.jpg",
    "http://10.0.0.1:8080/x.jpg",
    "http://[::ffff:7f00:1]/x.jpg",
])
def test_refused_urls_open_no_connection(url):
    with ConnectionLog() as log:
        with pytest.raises(InputRefused):
            fetch(url, FetchConfig(retries=0))
    assert log.addresses == []


@pytest.mark.parametrize(("url", "reason"), [
    ("file:///etc/passwd", "scheme 'file' refused"),
    ("gopher://example.com/", "scheme 'gopher' refused"),
    ("http:///x.jpg", "has no host"),
    ("http://example.com:99999/", "malformed URL"),
])
def test_malformed_or_other_scheme_urls_are_refused(url, reason):
    with ConnectionLog() as log, pytest.raises(InputRefused, match=reason):
        fetch(url)
    assert log.addresses == []
