"""The gateway's hooks into its libraries' private parts (gateway/internals.py): each is
there in the versions installed (a version bump that moves one fails here, by name), and
each does what it says: the Date text, a peer's forwarding trust and `wsgi.errors`' streams
kept or put off, many histogram observations added at once."""

from __future__ import annotations

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message, wsgi
from prometheus_client import CollectorRegistry, Histogram

from cortex.gateway import internals
from cortex.gateway.internals import DateText, LazyErrors, remembered_trust


def test_the_date_header_is_gunicorns_text_formatted_once_a_second(monkeypatch):
    formatted = []

    def fmt(timestamp=None):
        formatted.append(timestamp)
        return util.http_date(timestamp)

    date = DateText(fmt)
    monkeypatch.setattr(internals.time, "time", lambda: 1_700_000_000.25)
    assert date() == date() == "Tue, 14 Nov 2023 22:13:20 GMT"
    monkeypatch.setattr(internals.time, "time", lambda: 1_700_000_001.75)
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


def test_every_hook_finds_what_it_relies_on():
    internals.check()  # what `cortex serve` does at start-up, through the import


@pytest.mark.parametrize("owner, name, moved", [
    (wsgi.Response, "_emit_body", "gunicorn.http.wsgi.Response"),
    (message.HeaderPolicy, "_peer_is_trusted_proxy", "HeaderPolicy._peer_is_trusted_proxy"),
    (wsgi, "WSGIErrorsWrapper", "gunicorn.http.wsgi.WSGIErrorsWrapper"),
    (util, "http_date", "gunicorn.util.http_date"),
])
def test_a_hook_whose_target_moved_stops_the_gateway_by_name(monkeypatch, owner, name, moved):
    monkeypatch.delattr(owner, name)
    with pytest.raises(internals.InternalsMoved, match=moved.replace(".", r"\.")):
        internals.check()


def test_many_observations_land_as_one_by_one_would():
    registry = CollectorRegistry()
    buckets = (0.1, 1.0, 10.0)
    one = Histogram("one", "by observe", buckets=buckets, registry=registry)
    many = Histogram("many", "by observe_many", buckets=buckets, registry=registry)
    values = [0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 99.0]
    for v in values:
        one.observe(v)
    internals.observe_many(many)(values)

    def samples(name: str) -> list:
        return [(s.name.removeprefix(name), s.labels, s.value)
                for m in registry.collect() if m.name == name for s in m.samples
                if not s.name.endswith("_created")]

    assert samples("many") == samples("one")
