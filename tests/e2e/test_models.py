"""GET /v1/models and /v1/models/{id} in OpenAI and Anthropic shapes, against a real server.

A key sees exactly the deployments it may call: its org's own and those granted to its org, cut
down to the listed ones for a restricted key. The list and the 403 of a request never disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest

from tests.e2e import surface_fixtures

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def oai(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, timeout=30)


def anth(server, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=server.url, max_retries=0, timeout=30)


@dataclass
class World:
    """org `home` owns `own` and `other_own`; org `away` owns `granted` (granted to home) and `foreign`."""

    own: object
    other_own: object
    granted: object
    foreign: object
    wide: str  # home, all models
    restricted: str  # home, only `own`
    restricted_granted: str  # home, only `granted`
    away_wide: str  # away, all models
    outsider: str  # a third org with nothing of its own
    own_token: str

    @property
    def deployments(self) -> list:
        return [self.own, self.other_own, self.granted, self.foreign]

    @property
    def keys(self) -> dict[str, str]:
        return {
            "wide": self.wide,
            "restricted": self.restricted,
            "restricted_granted": self.restricted_granted,
            "away_wide": self.away_wide,
            "outsider": self.outsider,
        }


@pytest.fixture
def world(tenant) -> World:
    from deployments.actions import create_deployment, grant_model

    suffix = uuid.uuid4().hex[:6]
    home = tenant.org
    away = tenant.new_org()
    other_own = create_deployment(org=home, name=f"home-b-{suffix}")
    granted = create_deployment(org=away, name=f"away-g-{suffix}")
    foreign = create_deployment(org=away, name=f"away-f-{suffix}")
    grant_model(deployment=granted, org=home)
    return World(
        own=tenant.deployment,
        other_own=other_own,
        granted=granted,
        foreign=foreign,
        wide=tenant.key,
        restricted=tenant.make_key(deployments=[tenant.deployment]),
        restricted_granted=tenant.make_key(deployments=[granted]),
        away_wide=tenant.make_key(org=away),
        outsider=tenant.make_key(org=tenant.new_org()),
        own_token=tenant.token,
    )


def names(deployments) -> set[str]:
    return {d.name for d in deployments}


def openai_ids(server, key: str) -> set[str]:
    return {m.id for m in oai(server, key).models.list()}


def world_ids(world: World, ids: set[str]) -> set[str]:
    """Restrict to this test's deployments: other tests' deployments live in the same database."""
    return ids & names(world.deployments)


# ---------------------------------------------------------------------------------------------- who sees what


def test_restricted_key_sees_only_its_listed_deployment(server, world):
    assert openai_ids(server, world.restricted) == {world.own.name}


def test_restricted_key_may_list_a_granted_deployment(server, world):
    assert openai_ids(server, world.restricted_granted) == {world.granted.name}


def test_wide_key_sees_its_orgs_deployments_and_granted_ones(server, world):
    ids = openai_ids(server, world.wide)
    assert world_ids(world, ids) == names([world.own, world.other_own, world.granted])
    assert world.foreign.name not in ids


def test_outsider_sees_none_of_this_orgs_deployments(server, world):
    assert world_ids(world, openai_ids(server, world.outsider)) == set()


def test_anthropic_list_has_the_same_models_and_a_complete_page(server, world):
    page = anth(server, world.wide).models.list()
    ids = [m.id for m in page.data]
    assert set(ids) == openai_ids(server, world.wide)
    assert page.has_more is False
    assert page.first_id == ids[0]
    assert page.last_id == ids[-1]
    assert [m.id for m in page] == ids  # auto-pagination stops after the one page


def test_anthropic_list_for_a_restricted_key(server, world):
    page = anth(server, world.restricted).models.list()
    assert [m.id for m in page.data] == [world.own.name]
    assert (page.first_id, page.last_id, page.has_more) == (world.own.name, world.own.name, False)


# ---------------------------------------------------------------------------------------------- shapes


def test_openai_model_entry_has_the_typed_fields(server, world):
    [model] = list(oai(server, world.restricted).models.list())
    assert model.id == world.own.name
    assert model.object == "model"
    assert model.created == int(world.own.created_at.timestamp())
    assert isinstance(model.owned_by, str) and model.owned_by


def test_anthropic_model_entry_has_the_typed_fields(server, world):
    [model] = anth(server, world.restricted).models.list().data
    assert model.type == "model"
    assert model.id == world.own.name
    assert model.display_name == world.own.name
    assert model.created_at == world.own.created_at.astimezone(UTC).replace(microsecond=0)
    assert isinstance(model.created_at, datetime)


def test_online_is_true_with_a_connector_and_false_without(server, world, start_connector):
    start_connector(world.own_token)
    listed = {m.id: m.model_extra["online"] for m in oai(server, world.wide).models.list()}
    assert listed[world.own.name] is True
    assert listed[world.other_own.name] is False
    assert listed[world.granted.name] is False
    anthropic_listed = {m.id: m.model_extra["online"] for m in anth(server, world.wide).models.list().data}
    assert anthropic_listed[world.own.name] is True
    assert anthropic_listed[world.other_own.name] is False


# ---------------------------------------------------------------------------------------------- one model


def test_retrieve_a_visible_model_in_openai_shape(server, world):
    model = oai(server, world.wide).models.retrieve(world.granted.name)
    assert (model.id, model.object) == (world.granted.name, "model")
    assert model.created == int(world.granted.created_at.timestamp())
    assert model.model_extra["online"] is False


def test_retrieve_a_visible_model_in_anthropic_shape(server, world, start_connector):
    start_connector(world.own_token)
    model = anth(server, world.wide).models.retrieve(world.own.name)
    assert (model.id, model.type, model.display_name) == (world.own.name, "model", world.own.name)
    assert model.model_extra["online"] is True


def test_retrieve_a_model_the_key_cannot_use_is_404_in_both_shapes(server, world):
    for name in (world.other_own.name, world.foreign.name, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as info:
            oai(server, world.restricted).models.retrieve(name)
        assert info.value.code == "model_not_found"
        with pytest.raises(anthropic.NotFoundError) as info:
            anth(server, world.restricted).models.retrieve(name)
        assert info.value.body["type"] == "error"
        assert info.value.body["error"]["type"] == "not_found_error"


def test_listing_needs_a_valid_key(server, world):
    with pytest.raises(openai.AuthenticationError):
        oai(server, "sk-tokios-not-a-key").models.list()
    with pytest.raises(anthropic.AuthenticationError) as info:
        anth(server, "sk-tokios-not-a-key").models.list()
    assert info.value.body["error"]["type"] == "authentication_error"


# ---------------------------------------------------------------------------------------------- list vs 403


def test_the_list_the_lookup_and_the_403_never_disagree(server, world):
    for label, key in world.keys.items():
        listed = openai_ids(server, key)
        anthropic_listed = {m.id for m in anth(server, key).models.list().data}
        assert anthropic_listed == listed, label
        for deployment in world.deployments:
            for headers in ({}, {"anthropic-version": "2023-06-01"}):
                looked_up = httpx.get(
                    f"{server.url}/v1/models/{deployment.name}",
                    headers={"authorization": f"Bearer {key}", **headers},
                    timeout=30,
                ).status_code
                assert looked_up == (200 if deployment.name in listed else 404), (label, deployment.name, headers)
            status = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": deployment.name, "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            ).status_code
            assert status in (403, 503), (label, deployment.name, status)  # no connectors: allowed means 503
            assert (deployment.name in listed) == (status != 403), (label, deployment.name, status)
