"""The gateway's gunicorn worker keeps or puts off what gunicorn works out for every
request: the Date text, a peer's forwarding trust, `wsgi.errors`' streams."""

from __future__ import annotations

from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message

from cortex.gateway import worker
from cortex.gateway.worker import DateText, LazyErrors, remembered_trust


def test_the_date_header_is_gunicorns_text_formatted_once_a_second(monkeypatch):
    formatted = []

    def fmt(timestamp=None):
        formatted.append(timestamp)
        return util.http_date(timestamp)

    date = DateText(fmt)
    monkeypatch.setattr(worker.time, "time", lambda: 1_700_000_000.25)
    assert date() == date() == "Tue, 14 Nov 2023 22:13:20 GMT"
    monkeypatch.setattr(worker.time, "time", lambda: 1_700_000_001.75)
    assert date() == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert formatted == [1_700_000_000, 1_700_000_001]
    assert date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # an explicit time is formatted as is


class Peer(message.HeaderPolicy):
    def __init__(self, cfg: Config, addr) -> None:
        self.cfg, self.peer_addr = cfg, addr


def test_a_peers_trust_is_gunicorns_answer_kept_per_address():
    cfg = Config()
    cfg.set("forwarded_allow_ips", "10.0.0.0/8")
    asked = []

    def decide(request):
        asked.append(request.peer_addr)
        return message.HeaderPolicy._peer_is_trusted_proxy(request)

    trusted = remembered_trust(decide)
    assert trusted(Peer(cfg, ("10.1.2.3", 4000))) is True
    assert trusted(Peer(cfg, ("10.1.2.3", 4001))) is True  # another connection, same host
    assert trusted(Peer(cfg, ("192.168.0.9", 4000))) is False
    assert trusted(Peer(cfg, ("192.168.0.9", 4002))) is False
    assert asked == [("10.1.2.3", 4000), ("192.168.0.9", 4000)]
    assert trusted(Peer(cfg, "/run/cortex.sock")) is True  # a UNIX socket: gunicorn's rule


def test_wsgi_errors_finds_its_streams_when_first_written_to(capsys):
    cfg = Config()
    cfg.set("errorlog", "-")
    errors = LazyErrors(cfg)  # built for each request; most never write to it
    errors.write("a line\n")
    assert capsys.readouterr().err == "a line\n"
