"""Fault injection and the request log (devtools/localstripe/faults.py), over HTTP with the
real stripe-python client: a rule answers 429 with Stripe's error and the chosen headers,
the faulted request never reaches localstripe (nothing created, its idempotency key
unused), and the log records every request in arrival order."""

from __future__ import annotations

import pytest
import requests
import stripe

from billing.tests.support.localstripe_server import run_localstripe

API_KEY = "sk_test_" + "LocalstripeFaultTests0000"


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.fixture
def client(stripe_url):
    requests.delete(f"{stripe_url}/_config/faults", timeout=5)
    requests.delete(f"{stripe_url}/_config/requests", timeout=5)
    return stripe.StripeClient(API_KEY, base_addresses={"api": stripe_url}, max_network_retries=0)


def fault(url: str, **rule) -> dict:
    response = requests.post(f"{url}/_config/faults", json=rule, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def log(url: str, since: int = 0) -> list[dict]:
    return requests.get(f"{url}/_config/requests", params={"since": since}, timeout=5).json()["data"]


def test_it_answers_429_with_stripes_error_and_the_chosen_headers_then_lets_requests_through(stripe_url, client):
    fault(stripe_url, count=2, method="POST", path="^/v1/customers$", headers={"Retry-After": "3"})
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError) as caught:
            client.v1.customers.create(params={"name": "Office"}, options={"idempotency_key": "faults-1"})
        assert caught.value.http_status == 429
        assert caught.value.json_body["error"]["code"] == "rate_limit"
        assert caught.value.headers["Retry-After"] == "3"
        assert caught.value.headers["Request-Id"].startswith("req_")
    # The key was never used by a faulted request: the third attempt creates the customer.
    created = client.v1.customers.create(params={"name": "Office"}, options={"idempotency_key": "faults-1"})
    assert created.id.startswith("cus_")
    assert requests.get(f"{stripe_url}/_config/faults", timeout=5).json() == {"faults": []}
    entries = log(stripe_url)
    assert [(e["status"], e["faulted"], e["idempotency_key"]) for e in entries] == [
        (429, True, "faults-1"),
        (429, True, "faults-1"),
        (200, False, "faults-1"),
    ]
    assert entries[0]["t"] <= entries[1]["t"] <= entries[2]["t"]


def test_it_skips_matching_requests_and_leaves_others_alone(stripe_url, client):
    fault(
        stripe_url,
        count=1,
        skip=2,
        method="GET",
        path="^/v1/customers/",
        headers={"Stripe-Should-Retry": "false"},
    )
    customer = client.v1.customers.create(params={"name": "Office"})  # a POST: not matched
    client.v1.customers.retrieve(customer.id)
    client.v1.customers.retrieve(customer.id)
    with pytest.raises(stripe.RateLimitError) as caught:
        client.v1.customers.retrieve(customer.id)
    assert caught.value.headers["Stripe-Should-Retry"] == "false"
    client.v1.customers.retrieve(customer.id)
    assert [e["faulted"] for e in log(stripe_url)] == [False, False, False, True, False]
    assert len(log(stripe_url, since=3)) == 2


def test_it_injects_other_statuses_and_refuses_a_bad_rule(stripe_url, client):
    fault(stripe_url, status=503, headers={"Stripe-Should-Retry": "true"})
    with pytest.raises(stripe.APIError) as caught:
        client.v1.customers.list()
    assert caught.value.http_status == 503
    for bad in ({"count": 0}, {"status": 200}, {"path": "("}, {"skip": -1}):
        assert requests.post(f"{stripe_url}/_config/faults", json=bad, timeout=5).status_code == 400
    assert requests.delete(f"{stripe_url}/_config/faults", timeout=5).json() == {"faults": []}


def test_it_takes_a_rule_as_a_form_like_localstripes_own_settings(stripe_url, client):
    response = requests.post(
        f"{stripe_url}/_config/faults",
        data={"count": "1", "path": "/v1/invoices", "headers[Retry-After]": "1"},
        timeout=5,
    )
    assert response.json()["faults"][0]["headers"] == {"Retry-After": "1"}
    with pytest.raises(stripe.RateLimitError):
        client.v1.invoices.list()
