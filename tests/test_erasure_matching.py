"""An erasure matches the customer's identifiers as whole tokens, not as text inside another's."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from connector.storage import models as m
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401  (the scenarios' fixtures)
from tests.test_compliance import Person
from tests.test_customer_redact import cli_config, redact, woo, woo_order  # noqa: F401  (woo: a fixture)



def test_erasing_ann_by_email_leaves_the_rows_of_joann_whose_address_contains_hers(db_url, woo, tmp_path):
    """ann@example.org is inside joann@example.org as text: erasing Ann must not empty Joann's stored
    order (its body and event), which a replay or her own export still needs."""
    ann = Person("Ann", "Rossi", "ann@example.org", "+91 99887 71111", "+919988771111", 5001)
    joann = Person("Joann", "Verdi", "joann@example.org", "+91 99887 72222", "+919988772222", 5002)
    sc = woo
    sc.woo("order.created", woo_order(joann, 8001, sc.now - timedelta(days=3), cod=False, status="completed"))
    sc.woo("order.created", woo_order(ann, 8002, sc.now - timedelta(days=2), cod=False, status="completed"))
    sc.work()
    assert redact(cli_config(tmp_path, db_url), "--store", "woo", "--email", ann.email, "--yes").exit_code == 0
    with sc.runtime.db.engine.connect() as conn:
        events = [r.event for r in conn.execute(select(m.InboxEvent.event).where(m.InboxEvent.source == "woocommerce")
                                                .order_by(m.InboxEvent.id))]
    assert events[0] is not None and events[1] is None  # Joann's kept, Ann's erased
