"""The gateway's fleet against real model servers in threads (fake pipeline): placement, routing
from another gateway, discovery by list, DNS (an injected resolver) and socket directory, CurveZMQ."""

from __future__ import annotations

import collections
import socket
import threading
import time

import pytest
import zmq

from common.curve import CurveKeys, make_keys
from gateway.fleet import Fleet, discovery
from gateway.fleet.discovery import DnsDiscovery, SocketDirDiscovery
from gateway.model_client import ModelClient, ModelServerUnavailable, RemoteError
from model_server.fake_pipeline import FakePipeline
from model_server.healthcheck import check
from model_server.settings import ModelServerSettings
from model_server.transport.server import ModelServer
from protocol.errors import ErrorCode
from protocol.messages import Completed, ModelState
from tests.helpers import free_port, wait_until
from tests.helpers.servers import params


@pytest.fixture
def servers(tmp_path):
    """``start(bind, step_seconds=..., **settings)`` runs a model server in a thread."""
    started = []

    def start(bind: str, step_seconds: float = 0.01, **overrides) -> ModelServer:
        overrides.setdefault("shutdown_grace_seconds", 0.1)  # teardown cancels what still runs
        overrides.setdefault("cache_dir", str(tmp_path / f"cache-{len(started)}"))  # measured speeds and peaks
        settings = ModelServerSettings(bind=bind, pipeline="fake", **overrides)
        server = ModelServer(settings, load=lambda: FakePipeline(step_seconds=step_seconds)).start()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        wait_until(lambda: server.state.model_state is ModelState.READY, 10, what="model ready")
        return server

    yield start
    for server, thread in started:
        server.request_shutdown()
        thread.join(10)


@pytest.fixture
def fleets():
    made = []

    def make(spec: str, **kw) -> Fleet:
        fleet = Fleet(discovery(spec, kw.pop("resolver", socket.getaddrinfo)), timeout=kw.pop("timeout", 3.0), **kw)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


def test_jobs_spread_over_the_ready_servers_and_any_other_gateway_finds_each_job(tmp_path, servers, fleets):
    started = [servers(f"ipc://{tmp_path}/m{i}.sock", step_seconds=0.05) for i in range(3)]
    spec = ",".join(s.bound_address for s in started)
    fleet = fleets(spec)
    jobs = [fleet.submit(params(seed=i, steps=10), client_id=f"client-{i % 2}") for i in range(6)]
    where = collections.Counter(job.job_id[:8] for job in jobs)
    assert set(where) == {s.table.server_id for s in started}
    assert sorted(where.values()) == [2, 2, 2]  # least work first, ties in turn
    other = fleets(spec)  # another gateway process: no memory of the placements
    for i, job in enumerate(jobs):
        done = [e for e in other.watch(job.job_id, f"client-{i % 2}") if isinstance(e, Completed)]
        assert done and done[0].job.job_id == job.job_id
        info, data = other.fetch(job.job_id, 0, f"client-{i % 2}")
        assert data and info.seed == i
    with pytest.raises(RemoteError) as err:  # someone else's job: not found, on whichever server it is
        other.get_job(jobs[0].job_id, "client-1")
    assert err.value.error.code is ErrorCode.NOT_FOUND
    views = other.servers(timeout=2)
    assert [v.alive for v in views] == [True] * 3 and {v.pong.server_id for v in views} == set(where)


def test_a_job_goes_to_the_server_with_the_least_work(tmp_path, servers, fleets):
    busy, idle = (servers(f"ipc://{tmp_path}/{name}.sock", step_seconds=0.2) for name in ("busy", "idle"))
    for i in range(3):  # busy gets a running job and two queued, behind the fleet's back
        ModelClient(busy.bound_address).submit(params(seed=i, steps=20))
    fleet = fleets(f"{busy.bound_address},{idle.bound_address}")
    placed = [fleet.submit(params(seed=10 + i)).job_id[:8] for i in range(2)]
    assert placed == [idle.table.server_id] * 2  # 1 then 2 jobs of work on idle, still less than busy's 3


def test_a_server_that_took_a_job_counts_as_busy_before_its_next_heartbeat(tmp_path, servers, fleets):
    a, b = (servers(f"ipc://{tmp_path}/{name}.sock", step_seconds=0.2) for name in ("a", "b"))
    ModelClient(b.bound_address).submit(params(seed=0, steps=20))  # b runs one job, behind the fleet's back
    fleet = fleets(f"{a.bound_address},{b.bound_address}")
    placed = [fleet.submit(params(seed=1 + i, steps=20)).job_id[:8] for i in range(3)]
    # a was idle at the heartbeat: once it took the first job (queued or already running) it is as busy as b,
    # so of the next two one goes to each; counted idle, both would have gone to a.
    assert placed[0] == a.table.server_id and collections.Counter(placed) == {a.table.server_id: 2,
                                                                              b.table.server_id: 1}


def test_among_equally_busy_servers_a_job_goes_where_its_model_is_loaded(tmp_path, servers, fleets):
    a, b = (servers(f"ipc://{tmp_path}/{name}.sock", models="other") for name in ("a", "b"))
    ModelClient(a.bound_address).submit(params(model="other", steps=1))  # behind the fleet's back: a loads "other"
    wait_until(lambda: getattr(a.worker.models.loaded, "name", "") == "other" and a.table.depth == 0, 10,
               what="a holds other")
    fleet = fleets(f"{a.bound_address},{b.bound_address}")
    placed = []
    for i, model in enumerate(["other", "", "other", "", "", "other"]):
        # the last job is done and a heartbeat since has seen both servers idle and which model each holds
        wait_until(lambda: all(m.ready and m.work == 0 for m in fleet.roster.members())
                   and any(m.pong.loaded_model == "other" for m in fleet.roster.members()), 10, what="fleet settled")
        job = fleet.submit(params(seed=i, steps=1, model=model))
        placed.append((model, job.job_id[:8]))
        wait_until(lambda job=job: fleet.get_job(job.job_id).state.terminal, 10, what="job done")
    assert {server for model, server in placed if model == "other"} == {a.table.server_id}
    assert {server for model, server in placed if model == ""} == {b.table.server_id}


def test_a_job_over_one_servers_memory_budget_goes_to_one_it_fits(tmp_path, servers, fleets):
    small, large = (servers(f"ipc://{tmp_path}/{name}.sock") for name in ("small", "large"))
    small.worker.budget.idle_bytes = 40 * 2**30  # as if its model held 40 GiB, against a budget of 32
    small.worker.budget.setting = "32GiB"
    fleet = fleets(f"{small.bound_address},{large.bound_address}")
    jobs = [fleet.submit(params(seed=i)) for i in range(3)]
    assert {job.job_id[:8] for job in jobs} == {large.table.server_id}  # refused by small (nothing queued there)
    wait_until(lambda: all(fleet.get_job(job.job_id).state.terminal for job in jobs), 10, what="jobs done")
    # As if its model held 40 GiB too; its worker's own idle reading after those jobs (half a second later, more on
    # a busy machine) must not replace ours.
    large.worker.budget.idle = lambda: None
    large.worker.budget.idle_bytes, large.worker.budget.setting = 40 * 2**30, "32GiB"
    with pytest.raises(RemoteError) as refused:  # over every server's budget: the budget's own refusal
        fleet.submit(params(seed=9))
    assert refused.value.error.code is ErrorCode.OVER_BUDGET and "MEMORY_BUDGET" in refused.value.error.hint


def test_the_per_client_cap_holds_across_servers(tmp_path, servers, fleets):
    started = [servers(f"ipc://{tmp_path}/m{i}.sock", step_seconds=0.5, max_queued_per_client=2) for i in range(2)]
    fleet = fleets(",".join(s.bound_address for s in started))
    for i in range(4):  # two running (one per server), two queued
        fleet.submit(params(seed=i, steps=20), client_id="greedy")
        time.sleep(0.1)
    with pytest.raises(RemoteError) as err:
        fleet.submit(params(seed=9), client_id="greedy")
    assert err.value.error.code is ErrorCode.QUEUE_FULL and "limit per client is 2" in err.value.error.message
    fleet.submit(params(seed=9), client_id="someone-else")


def test_dns_discovery_connects_to_every_address_the_name_resolves_to(servers, fleets):
    port = free_port()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    started = {h: servers(f"tcp://{h}:{port}") for h in hosts}
    answer = list(hosts)

    def resolver(name, port_, type=0):  # noqa: A002  (getaddrinfo's own keyword)
        assert name == "model-headless" and port_ == port
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, port)) for h in answer]

    fleet = fleets(f"dns+tcp://model-headless:{port}", resolver=resolver, discovery_seconds=0.1)
    jobs = [fleet.submit(params(seed=i)) for i in range(3)]
    assert {j.job_id[:8] for j in jobs} == {s.table.server_id for s in started.values()}
    answer.remove("127.0.0.3")  # a pod gone from the Service: it leaves the fleet at the next lookup
    wait_until(lambda: len(fleet.servers()) == 2, 5, what="the third server dropped")
    assert {j.job_id[:8] for j in (fleet.submit(params(seed=9 + i)) for i in range(4))} == {
        started[h].table.server_id for h in hosts[:2]}


def test_a_dns_failure_keeps_the_known_servers_and_a_missing_name_means_none():
    calls = []

    def resolver(name, port, type=0):  # noqa: A002
        calls.append(name)
        if len(calls) == 2:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if len(calls) == 3:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", port, 0, 0))]

    found = DnsDiscovery("model", 5555, resolver)
    assert found.addresses() == ["tcp://[fd00::1]:5555"]
    assert found.addresses() == ["tcp://[fd00::1]:5555"]  # resolver hiccup: keep them
    assert found.addresses() == []  # no such name: no servers


def test_a_socket_directory_finds_each_replica(tmp_path, servers, fleets):
    folder = tmp_path / "servers"
    folder.mkdir()
    servers(f"ipc://{folder}/a.sock")
    (folder / "notes.txt").write_text("not a socket")
    fleet = fleets(f"ipc-dir://{folder}", discovery_seconds=0.1)
    assert [v.name for v in fleet.servers()] == ["a.sock"]
    servers(f"ipc://{folder}/b.sock")
    wait_until(lambda: len(fleet.servers()) == 2, 5, what="the second replica found")
    assert SocketDirDiscovery(str(tmp_path / "nowhere")).addresses() == []


@pytest.mark.parametrize("spec", ["http://model:5555", "dns+tcp://model", "ipc-dir://relative/dir", " , "])
def test_an_unusable_address_is_refused_at_start(spec):
    with pytest.raises(ValueError, match="MODEL_SERVER_ADDRESS"):
        discovery(spec)


def test_curve_lets_only_gateways_with_an_allowed_key_in(tmp_path, servers, fleets):
    keys = tmp_path / "keys"
    make_keys(keys)
    port = free_port()
    server = servers(f"tcp://0.0.0.0:{port}", curve_secret_key=str(keys / "server.key_secret"),
                     curve_clients_dir=str(keys / "clients"))
    address = f"tcp://127.0.0.1:{port}"
    allowed = CurveKeys.for_client(str(keys / "gateway.key_secret"), str(keys / "server.key"))
    fleet = fleets(address, curve=allowed)
    assert fleet.ping(timeout=2).model_state is ModelState.READY
    job = fleet.submit(params())
    assert any(isinstance(e, Completed) for e in fleet.watch(job.job_id))

    plain = ModelClient(address, timeout=1.0)  # no CURVE at all: the handshake never completes
    with pytest.raises(ModelServerUnavailable):
        plain.ping(timeout=1.0)
    plain.close()
    stranger_public, stranger_secret = zmq.curve_keypair()  # CURVE, but a key the server does not list
    stranger = ModelClient(address, timeout=1.0, curve=CurveKeys(stranger_public, stranger_secret,
                                                                server_public=allowed.server_public))
    with pytest.raises(ModelServerUnavailable):
        stranger.ping(timeout=1.0)
    stranger.close()
    assert server.table.stats["jobs_succeeded"] == 1
    own = CurveKeys.for_server(str(keys / "server.key_secret"), str(keys / "clients")).as_own_client()
    assert check(address, curve=own)[0] is True  # the container healthcheck, with the server's pair
    assert check(address, timeout_ms=500)[0] is False
    (keys / "clients" / "gateway.key").unlink()  # a key taken away counts at the next handshake
    late = ModelClient(address, timeout=1.0, curve=allowed)
    with pytest.raises(ModelServerUnavailable):
        late.ping(timeout=1.0)
    late.close()


def test_a_remote_bind_needs_curve_or_an_explicit_override(tmp_path):
    with pytest.raises(ValueError, match="CURVE"):
        ModelServerSettings(bind="tcp://0.0.0.0:5555", pipeline="fake").validated()
    keys = tmp_path / "keys"
    make_keys(keys)
    ModelServerSettings(bind="tcp://0.0.0.0:5555", pipeline="fake", curve_secret_key=str(keys / "server.key_secret"),
                        curve_clients_dir=str(keys / "clients")).validated()
    ModelServerSettings(bind="tcp://0.0.0.0:5555", pipeline="fake", allow_remote=True).validated()
    with pytest.raises(ValueError, match="holds no secret key"):
        ModelServerSettings(bind="tcp://0.0.0.0:5555", pipeline="fake", curve_secret_key=str(keys / "server.key"),
                            curve_clients_dir=str(keys / "clients")).validated()


def test_a_lost_servers_finished_images_are_served_by_a_peer_from_shared_storage(tmp_path, servers, fleets):
    shared = tmp_path / "outputs"  # one folder per replica under it: OUTPUTS_DIR=/outputs/{hostname}
    first, second = (servers(f"ipc://{tmp_path}/{n}.sock", step_seconds=0.1, outputs_dir=f"{shared}/{n}{{hostname}}")
                     for n in ("a", "b"))
    fleet = fleets(f"{first.bound_address},{second.bound_address}")
    job = fleet.submit(params(seed=5), client_id="alice")
    lost = first if job.job_id[:8] == first.table.server_id else second  # ties go round from a random start
    assert job.job_id[:8] == lost.table.server_id
    assert any(isinstance(e, Completed) for e in fleet.watch(job.job_id, "alice"))
    _, before = fleet.fetch(job.job_id, 0, "alice")
    lost.request_shutdown()
    wait_until(lambda: lost.router.closed, 10, what="the job's server stopped")

    def answered():
        try:
            return fleet.get_job(job.job_id, "alice")
        except ModelServerUnavailable:  # the retryable 503 until its server is declared dead (3 s)
            return None

    assert wait_until(answered, 10, 0.2, "the job answered for by the other server").state.value == "succeeded"
    assert fleet.fetch(job.job_id, 0, "alice")[1] == before  # read from the lost replica's folder
    with pytest.raises(RemoteError) as err:  # still only its owner's
        fleet.fetch(job.job_id, 0, "bob")
    assert err.value.error.code is ErrorCode.NOT_FOUND
    assert fleet.delete(job.job_id, "alice").state.value == "succeeded"
    assert not list(shared.glob(f"*/jobs/{job.job_id}.json"))


def test_a_stopping_server_gives_its_queued_jobs_back_to_be_placed_on_another(tmp_path, servers, fleets):
    stopping = servers(f"ipc://{tmp_path}/stopping.sock", step_seconds=0.1, shutdown_grace_seconds=10)
    both = fleets(f"{stopping.bound_address},ipc://{tmp_path}/other.sock")  # the other is not up yet
    bobs = [both.submit(params(seed=i, steps=20), client_id="bob") for i in range(3)]  # one runs, two wait
    alone = fleets(stopping.bound_address)  # a gateway that knows only the stopping server
    alices = [alone.submit(params(seed=10 + i), client_id="alice") for i in range(2)]
    other = servers(f"ipc://{tmp_path}/other.sock", step_seconds=0.01)  # scaled up meanwhile
    wait_until(lambda: all(v.alive for v in both.servers()), 10, what="both servers seen")
    events, ends = [], []
    follower = threading.Thread(target=lambda: events.extend(both.watch(bobs[-1].job_id, "bob")))
    watchers = [threading.Thread(target=lambda j=j: ends.append(list(alone.watch(j.job_id, "alice"))[-1].job))
                for j in alices]
    for thread in [follower, *watchers]:
        thread.start()
    time.sleep(0.3)
    stopping.request_shutdown()  # SIGTERM: the running job may finish; queued ones are offered back
    for job in bobs:
        assert any(isinstance(e, Completed) for e in both.watch(job.job_id, "bob")), job.job_id
    follower.join(20)
    assert isinstance(events[-1], Completed)
    assert other.table.stats["jobs_succeeded"] == 2 and stopping.table.stats["jobs_succeeded"] == 1
    # Nobody took Alice's back (her gateway knows no other server): they end as on a lone server,
    # with the retryable shutdown error.
    for thread in watchers:
        thread.join(20)
    assert len(ends) == 2
    assert all(o.error and o.error.retryable and o.error.code is ErrorCode.SHUTTING_DOWN for o in ends)


def test_a_listing_for_answering_servers_only_never_waits_for_a_silent_one(tmp_path, servers, fleets):
    """The size a request that gives none gets is looked up in the model list: that lookup must not stand in
    front of the request's own call when no server answers (the request then says why in about a second)."""
    silent = fleets(f"tcp://127.0.0.1:{free_port()}")
    silent.roster.members()  # the process's first heartbeat round (every call's first pays it)
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable):
        silent.list_models(answering_only=True)
    assert time.monotonic() - started < 0.1
    bind = f"ipc://{tmp_path}/m.sock"
    servers(bind)
    fleet = fleets(bind)
    wait_until(lambda: fleet.roster.members()[0].ready, 10, what="a heartbeat answered")
    assert fleet.list_models(answering_only=True).models[0].name
