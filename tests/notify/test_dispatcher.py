"""The notifier against real receivers (an HTTP webhook and an SMTP server), on SQLite and
PostgreSQL: each message arrives once, outages are retried then dead-lettered, acknowledged
flags are not reminded, quiet hours hold warnings, digests group events."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from core.settings import load_settings
from notify import Notifier, Outbox
from rules.finding import Finding
from rules.flag import FlagBook
from tests.notify.conftest import T0, add_flag

pytestmark = pytest.mark.integration

HOLD = 1800.0


def settings(tmp_path, channels: list[dict[str, Any]], **notify: Any):
    return load_settings(None, services={"state_dir": str(tmp_path / "state")},
                         notify={"channels": channels, "retry_backoff": "30s", **notify})


def make_notifier(cfg, store, **kw: Any) -> Notifier:
    """The notifier as the shell makes it: the [notify] section and the [time] zone."""
    return Notifier(cfg.notify, store, zone=cfg.time.zone, **kw)


def finding(site: str = "S1", severity: str = "warning", kind: str = "site_offline",
            end=T0) -> Finding:
    return Finding(kind=kind, rule=kind, site_id=site, severity=severity,
                   window_start=T0 - timedelta(minutes=20), window_end=end,
                   summary=f"{site} silent for a while", evidence={})


def test_each_event_arrives_once_on_a_webhook_and_by_mail(store, webhook, mailbox, tmp_path):
    cfg = settings(tmp_path, [{"name": "hook", "url": webhook.url()},
                              {"name": "mail", "url": mailbox.url}])
    notifier = make_notifier(cfg, store)
    book = FlagBook(store)
    book.sync("site_offline", [finding()], T0, HOLD)
    assert notifier.tick(T0).sent == 2
    # The condition goes on: updates every run, but no new message.
    for i in range(1, 4):
        book.sync("site_offline", [finding(end=T0 + timedelta(minutes=5 * i))],
                  T0 + timedelta(minutes=5 * i), HOLD)
        assert notifier.tick(T0 + timedelta(minutes=5 * i)).sent == 0
    book.sync("site_offline", [finding(severity="critical", end=T0 + timedelta(minutes=20))],
              T0 + timedelta(minutes=20), HOLD)
    notifier.tick(T0 + timedelta(minutes=20))
    book.sync("site_offline", [], T0 + timedelta(minutes=25), HOLD)
    book.sync("site_offline", [], T0 + timedelta(minutes=60), HOLD)
    notifier.tick(T0 + timedelta(minutes=60))
    notifier.tick(T0 + timedelta(minutes=61))
    expected = ["[WARNING] site_offline opened - S1 Site S1 (Xinjin)",
                "[CRITICAL] site_offline escalated - S1 Site S1 (Xinjin)",
                "[CRITICAL] site_offline resolved - S1 Site S1 (Xinjin)"]
    assert webhook.titles() == expected
    assert mailbox.subjects() == expected
    assert "S1 silent for a while" in webhook.bodies()[0]
    assert "2026-11-20 12:00 +08:00" in webhook.bodies()[0]  # local time, [time] zone
    rows = Outbox(store).list()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"sent"}


def test_a_review_is_announced_and_a_first_seen_resolved_flag_is_not(store, webhook, tmp_path):
    notifier = make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url()}]), store)
    book = FlagBook(store)
    add_flag(store, status="resolved")  # e.g. opened and resolved inside a backfill
    live = add_flag(store, site="S2")
    notifier.tick(T0)
    book.review(live, "dismissed", "li.wei", T0 + timedelta(minutes=1))
    notifier.tick(T0 + timedelta(minutes=1))
    assert webhook.titles() == ["[WARNING] site_offline opened - S2 Site S2 (Pixian)",
                                "[WARNING] site_offline reviewed: dismissed - S2 Site S2 (Pixian)"]


def test_routes_by_kind_severity_and_county(store, webhook, tmp_path):
    cfg = settings(tmp_path, [
        {"name": "power", "url": webhook.url("power"), "kinds": ["mains_failure"],
         "min_severity": "info"},
        {"name": "pixian", "url": webhook.url("pixian"), "counties": ["Pixian"]},
        {"name": "pager", "url": webhook.url("pager"), "min_severity": "critical"},
        {"name": "opens", "url": webhook.url("opens"), "events": ["open"]},
    ])
    add_flag(store, site="S1", kind="mains_failure", severity="info")
    add_flag(store, site="S2", kind="site_offline", severity="warning")
    add_flag(store, site="S1", kind="site_offline", severity="critical")
    make_notifier(cfg, store).tick(T0)
    assert webhook.titles("power") == ["[INFO] mains_failure opened - S1 Site S1 (Xinjin)"]
    assert webhook.titles("pixian") == ["[WARNING] site_offline opened - S2 Site S2 (Pixian)"]
    assert webhook.titles("pager") == ["[CRITICAL] site_offline opened - S1 Site S1 (Xinjin)"]
    # min_severity defaults to warning: the info flag is not sent where no one asked for it.
    assert len(webhook.titles("opens")) == 2


def test_a_channel_that_is_down_gets_the_message_after_a_retry(store, webhook, tmp_path):
    notifier = make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url()}]), store)
    add_flag(store)
    webhook.down()
    r = notifier.tick(T0)
    assert (r.sent, r.failed, r.dead) == (0, 1, 0)
    (row,) = Outbox(store).list()
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"]
    assert row["due_at"] == T0 + timedelta(seconds=30)
    webhook.up()
    assert notifier.tick(T0 + timedelta(seconds=29)).sent == 0  # backing off
    assert notifier.tick(T0 + timedelta(seconds=30)).sent == 1
    assert notifier.tick(T0 + timedelta(seconds=90)).sent == 0
    assert len(webhook.titles()) == 1


def test_a_channel_that_stays_down_dead_letters_visibly_and_can_be_retried(
        store, webhook, tmp_path, twin_url, capsys, caplog):
    from sitetwin.cli import main

    secret = "hookPass-4f19c2"
    url = webhook.url().replace("json://", f"json://ops:{secret}@")
    cfg = settings(tmp_path, [{"name": "hook", "url": url}], retries=2)
    notifier = make_notifier(cfg, store)
    add_flag(store)
    add_flag(store, site="S2")
    webhook.down()
    caplog.set_level(logging.DEBUG)
    at = T0
    for _ in range(3):  # attempts at 0, +30 s, +60 s after that
        notifier.tick(at)
        at += timedelta(minutes=10)
    rows = Outbox(store).list()
    assert [r["status"] for r in rows] == ["dead", "dead"] and rows[0]["attempts"] == 3
    # caplog also holds Apprise's own records (pytest attaches to non-propagating loggers).
    assert secret not in caplog.text and secret not in (rows[0]["last_error"] or "")
    assert "json://ops:****@127.0.0.1" in caplog.text
    toml = tmp_path / "sitetwin.toml"
    toml.write_text(f'[twin]\nurl = "{twin_url}"\n[[notify.channels]]\nname = "hook"\n'
                    f'url = "{url}"\n')
    assert main(["--config", str(toml), "notify", "list", "--failed"]) == 0
    out = capsys.readouterr().out
    assert out.count("dead") == 2 and "hook" in out and secret not in out
    webhook.up()
    assert main(["--config", str(toml), "notify", "retry"]) == 0
    assert "2 dead-lettered message(s) queued again" in capsys.readouterr().out
    assert notifier.tick().sent == 2  # retry makes them due now (the clock), after T0
    assert len(webhook.titles()) == 2


def test_acknowledged_flags_are_not_reminded_but_escalations_still_go_out(store, webhook, tmp_path):
    notifier = make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url()}], repeat="10m"),
                        store)
    book = FlagBook(store)
    book.sync("site_offline", [finding()], T0, HOLD)
    notifier.tick(T0)
    notifier.tick(T0 + timedelta(minutes=5))
    notifier.tick(T0 + timedelta(minutes=10))  # nobody acknowledged it: reminded
    (flag,) = book.list()
    book.ack(flag["id"], "zhang.san", T0 + timedelta(minutes=11))
    for minutes in (20, 30, 45):
        notifier.tick(T0 + timedelta(minutes=minutes))
    assert webhook.titles() == ["[WARNING] site_offline opened - S1 Site S1 (Xinjin)",
                                "[WARNING] site_offline still open - S1 Site S1 (Xinjin)"]
    book.sync("site_offline", [finding(severity="critical", end=T0 + timedelta(minutes=50))],
              T0 + timedelta(minutes=50), HOLD)
    notifier.tick(T0 + timedelta(minutes=50))
    assert webhook.titles()[-1] == "[CRITICAL] site_offline escalated - S1 Site S1 (Xinjin)"
    assert "acknowledged by zhang.san" in webhook.bodies()[-1]
    assert len(webhook.titles()) == 3


def test_quiet_hours_hold_a_warning_but_not_a_critical(store, webhook, tmp_path):
    # T0 is 12:00 in Asia/Shanghai, inside 11:00-13:00.
    notifier = make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url(),
                                             "quiet_hours": "11:00-13:00"}]), store)
    add_flag(store, site="S1", severity="warning")
    add_flag(store, site="S2", severity="critical")
    notifier.tick(T0)
    assert webhook.titles() == ["[CRITICAL] site_offline opened - S2 Site S2 (Pixian)"]
    assert notifier.tick(T0 + timedelta(minutes=59)).sent == 0
    assert notifier.tick(T0 + timedelta(hours=1)).sent == 1  # 13:00 local
    assert webhook.titles()[-1] == "[WARNING] site_offline opened - S1 Site S1 (Xinjin)"


def test_a_digest_channel_sends_one_message_per_interval(store, webhook, tmp_path):
    notifier = make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url(), "digest": "1h"},
                                            {"name": "now", "url": webhook.url("now")}]), store)
    add_flag(store, site="S1", severity="warning")
    add_flag(store, site="S2", severity="critical")
    add_flag(store, site="S1", kind="mains_failure", severity="warning")
    notifier.tick(T0 + timedelta(minutes=1))
    assert webhook.titles() == [] and len(webhook.titles("now")) == 3
    assert notifier.tick(T0 + timedelta(minutes=59)).sent == 0
    assert notifier.tick(T0 + timedelta(minutes=60)).sent == 3  # three rows, one message
    (title,) = webhook.titles()
    assert title == "sitetwin: 3 alarm event(s), worst critical"
    lines = webhook.bodies()[0].splitlines()
    assert len(lines) == 3 and lines[0].startswith("[CRITICAL] site_offline opened - S2")


def test_a_bad_channel_is_refused_by_name_without_its_url(store, tmp_path):
    from notify import ChannelError

    with pytest.raises(ChannelError, match="'pager'") as err:
        make_notifier(settings(tmp_path, [{"name": "pager", "url": "nosuchscheme://tok3n-secret"}]), store)
    assert "tok3n" not in str(err.value)
    with pytest.raises(ChannelError, match="unknown flag kind"):
        make_notifier(settings(tmp_path, [{"name": "x", "url": "json://127.0.0.1/x",
                                      "kinds": ["site_offlne"]}]), store)


def test_sitetwin_run_notifies_from_its_own_thread(tmp_path, mosquitto, influxdb, influx_db,
                                                  webhook):
    """``sitetwin run``'s pipeline starts the notifier beside the rules; a bad channel stops
    start-up with the channel's name."""
    from notify import ChannelError
    from sitetwin.wiring import Pipeline
    from tests.support import wait_for
    from twin.store import open_store

    twin_url = f"sqlite:///{tmp_path / 'twin.sqlite'}"

    def pipeline(url: str) -> Pipeline:
        cfg = load_settings(
            None,
            mqtt={"servers": [mosquitto.url], "client_id": f"notify-run-{tmp_path.name}",
                  "shared_group": f"nr{abs(hash(str(tmp_path))) % 10**8}"},
            influxdb={"url": influxdb.url, "database": influx_db},
            services={"state_dir": str(tmp_path / "state")}, spool={"fsync": False},
            twin={"url": twin_url}, rules={"enabled": False},
            notify={"interval": "200ms", "channels": [{"name": "hook", "url": url}]})
        return Pipeline(cfg, twin=True, rules=True)

    bad = pipeline("nosuchscheme://x")
    with pytest.raises(ChannelError, match="'hook'"):
        bad.start()
    bad.stop()
    store = open_store(twin_url)
    add_flag(store, kind="mains_failure", severity="critical")
    store.close()
    run = pipeline(webhook.url())
    run.start()
    try:
        wait_for(lambda: webhook.titles(), timeout=20, message="the notification")
        wait_for(lambda: Outbox(run.notifier.outbox.store).list()[0]["status"] == "sent",
                 message="the row marked sent")
    finally:
        run.stop()
    assert webhook.titles() == ["[CRITICAL] mains_failure opened - S1"]  # S1 is not registered


def test_two_senders_at_once_send_each_message_once(store, webhook, tmp_path, twin_url):
    """``sitetwin run`` and a ``sitetwin rules run`` may pass over one outbox at the same time:
    the claim gives each row to one of them."""
    import re
    import threading

    from core.timeutil import get_zone
    from notify import OutboxError
    from twin.store import open_store

    cfg = settings(tmp_path, [{"name": "hook", "url": webhook.url()}])
    for i in range(12):
        add_flag(store, site=f"S{i}", kind=("site_offline", "mains_failure")[i % 2],
                 severity="critical", at=T0 + timedelta(seconds=i))
    Outbox(store).collect(T0, cfg.notify, get_zone("UTC"))
    other = open_store(twin_url)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def sender(s) -> None:
        notifier = make_notifier(cfg, s)
        start.wait()
        for _ in range(5):
            try:
                notifier.tick(T0 + timedelta(seconds=1))
            except OutboxError as exc:  # SQLite: one writer at a time; the next pass goes on
                errors.append(exc)

    threads = [threading.Thread(target=sender, args=(s,)) for s in (store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.close()
    ids = [int(re.search(r"flag #(\d+)", body).group(1)) for body in webhook.bodies()]
    assert len(ids) == 12 and len(set(ids)) == 12  # every flag's message, each once
    assert {r["status"] for r in Outbox(store).list()} == {"sent"}


def test_rows_of_a_removed_channel_are_dead_lettered_not_dropped(store, webhook, tmp_path):
    quiet = settings(tmp_path, [{"name": "old", "url": webhook.url("old"),
                                 "quiet_hours": "11:00-13:00"}])
    add_flag(store)
    make_notifier(quiet, store).tick(T0)  # held by the quiet hours
    make_notifier(settings(tmp_path, [{"name": "hook", "url": webhook.url()}]), store) \
        .tick(T0 + timedelta(hours=2))
    (row,) = Outbox(store).list(channel="old")
    assert row["status"] == "dead" and row["last_error"] == "channel no longer configured"
    assert webhook.titles("old") == []
