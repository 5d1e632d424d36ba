"""The dashboard's HTML pages and its sign-in, in-process on each database: pages render and
escape what users typed, the jobs list filters, and with API_KEY set a browser signs in with a
cookie while API clients keep the header and its JSON 401."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.auth import SIGN_IN_COOKIE, sign_in_token
from tests.builders import job_body, submit_job
from tests.conftest import without_api_key
from tests.support import drive_job, flip_bit_keeping_mtime

SMALL_JOB = job_body(hyperparameters={"epochs": 2}, train_samples=40)
HOSTILE_NAME = "<script>alert(1)</script>"
CHECKPOINT_BYTES = b"checkpoint bytes\n" * 32
KEY = "s3cret"


def submit(client: TestClient, **changes: object) -> int:
    return int(submit_job(client, **{**SMALL_JOB, **changes})["id"])


def listed_job_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr data-job-id="(\d+)"', html)]


def assert_html(response: object, status: int = 200) -> str:
    assert response.status_code == status, response.text
    headers = response.headers
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    return str(response.text)


def add_experiment(name: str, preset: str | None) -> int:
    """An experiments row, as POST /experiments would leave it (that route lives elsewhere)."""
    from jobs.db import session_scope
    from jobs.tables import Experiment

    with session_scope() as session:
        experiment = Experiment(name=name, preset=preset, tags=["ui"], spec={"name": name})
        session.add(experiment)
        session.flush()
        return experiment.id


def test_pages_render(client: TestClient) -> None:
    job_id = submit(client, name="first run")
    drive_job(job_id, 2, checkpoint=CHECKPOINT_BYTES, checkpoint_epochs=(1, 2))

    home = assert_html(client.get("/"))
    assert listed_job_ids(home) == [job_id]
    assert f'href="/ui/jobs/{job_id}"' in home and "first run" in home
    assert 'max="2" value="2"' in home  # the progress bar: epochs_done of epochs_total

    page = assert_html(client.get(f"/ui/jobs/{job_id}"))
    assert re.findall(r'<tr data-epoch="(\d+)">', page) == ["1", "2"]
    assert f'href="/jobs/{job_id}/checkpoints/latest"' in page
    assert "1.33 M" in page and "0.07 GMac" in page  # the mobile network's complexity
    assert "hyperparameters.epochs" in page
    # The state the page's script starts from: the job and every epoch so far.
    data = re.search(r'<script type="application/json" id="job-data">(.*?)</script>', page, re.S)
    assert data is not None
    initial = json.loads(data.group(1))
    assert initial["job"]["id"] == job_id
    assert [row["epoch"] for row in initial["metrics"]] == [1, 2]
    assert '<script type="module" src="/static/js/job.js">' in page

    submit_page = assert_html(client.get("/ui/submit"))
    for block in ("plain", "residual", "mobile"):
        assert f'<option value="{block}">' in submit_page
    assert 'data-field="hyperparameters.epochs"' in submit_page
    assert 'placeholder="100"' in submit_page  # the spec's default epochs

    experiment_id = add_experiment("report repro", "report")
    experiment = assert_html(client.get(f"/ui/experiments/{experiment_id}"))
    assert "report repro" in experiment
    assert [title for title in re.findall(r"<h2>(Problem \d)", experiment)] == [
        "Problem 1",
        "Problem 2",
        "Problem 3",
    ]
    assert 'data-blocks="plain residual"' in experiment
    plain = assert_html(client.get(f"/ui/experiments/{add_experiment('grid', None)}"))
    assert "Problem 1" not in plain and 'class="curve-chart"' in plain

    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    # None of the pages is part of the API's schema.
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith(("/ui", "/static"))]


def checkpoint_rows(html: str) -> dict[str, str]:
    """{name: row's HTML} of the job page's checkpoints table."""
    return dict(re.findall(r'<tr data-name="(\w+)"(.*?)</tr>', html, re.S))


def test_a_damaged_checkpoint_is_marked_and_not_offered(client: TestClient) -> None:
    from sqlalchemy import select

    from jobs.db import session_scope
    from jobs.settings import get_settings
    from jobs.tables import Checkpoint

    job_id = submit(client)
    drive_job(job_id, 2, checkpoint=CHECKPOINT_BYTES)
    rows = checkpoint_rows(assert_html(client.get(f"/ui/jobs/{job_id}")))
    assert set(rows) == {"latest", "best", "final"}
    for row in rows.values():
        assert 'data-state="intact"' in row and "<td>intact</td>" in row
    assert f'href="/jobs/{job_id}/checkpoints/latest"' in rows["latest"]

    with session_scope() as session:
        [key] = session.execute(select(Checkpoint.key).where(Checkpoint.job_id == job_id)).scalars()
    flip_bit_keeping_mtime(get_settings().resolved_artifact_dir / key)
    rows = checkpoint_rows(assert_html(client.get(f"/ui/jobs/{job_id}")))
    for name, row in rows.items():
        assert 'data-state="damaged"' in row and '<td class="problem">damaged</td>' in row
        assert "not served" in row and "href=" not in row, name


def test_unknown_ids_are_html_404s(client: TestClient) -> None:
    for path in ("/ui/jobs/999", "/ui/jobs/01", "/ui/jobs/1.0", "/ui/jobs/99999999999"):
        assert "There is no job" in assert_html(client.get(path), 404), path
    assert "There is no experiment" in assert_html(client.get("/ui/experiments/5"), 404)


def test_a_hostile_job_name_is_shown_as_text(client: TestClient) -> None:
    job_id = submit(client, name=HOSTILE_NAME)
    experiment_id = add_experiment(HOSTILE_NAME, "report")
    for path in ("/", f"/ui/jobs/{job_id}", f"/ui/experiments/{experiment_id}"):
        page = assert_html(client.get(path))
        assert HOSTILE_NAME not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
    # In the page's JSON data block too: no "</script>" that would end the block early.
    page = client.get(f"/ui/jobs/{job_id}").text
    block = page.split('id="job-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block)["job"]["name"] == HOSTILE_NAME


def test_jobs_list_filters_by_status_and_block(client: TestClient) -> None:
    mobile = submit(client)
    plain = submit(client, block="plain")
    cancelled = submit(client, block="plain")
    assert client.post(f"/jobs/{cancelled}/cancel").status_code == 200

    def listed(query: str) -> list[int]:
        return listed_job_ids(assert_html(client.get(f"/{query}")))

    assert listed("") == [cancelled, plain, mobile]
    assert listed("?status=cancelled") == [cancelled]
    assert listed("?block=mobile") == [mobile]
    assert listed("?block=plain&status=queued") == [plain]
    assert listed("?block=residual") == []
    assert listed("?status=&block=") == [cancelled, plain, mobile]  # the form's "any"
    # The filter form shows the chosen values.
    page = client.get("/?status=cancelled").text
    assert '<option value="cancelled" selected>' in page
    # Pages of 2 through the API's cursors: the second has the last job and a link back to
    # the newest; a damaged cursor is a page saying so.
    first = client.get("/?limit=2").text
    assert listed_job_ids(first) == [cancelled, plain]
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older is not None and "cursor=" in older.group(1)
    later = client.get(html.unescape(older.group(1))).text
    assert listed_job_ids(later) == [mobile] and 'href="/?limit=2" rel="first"' in later
    assert 'rel="next"' not in later
    damaged = assert_html(client.get("/?cursor=not-a-cursor"), 400)
    assert "page link is damaged" in damaged

    wrong = assert_html(client.get("/?status=finished&block=vgg"), 400)
    assert "There is no status &#39;finished&#39;" in wrong and "no block &#39;vgg&#39;" in wrong
    assert listed_job_ids(wrong) == []


def test_pages_load_nothing_from_outside(client: TestClient) -> None:
    job_id = submit(client)
    experiment_id = add_experiment("x", "report")
    for path in ("/", f"/ui/jobs/{job_id}", f"/ui/experiments/{experiment_id}", "/ui/submit"):
        page = client.get(path).text
        references = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert references, path
        for reference in references:
            assert reference.startswith(("/", "data:")), (path, reference)
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            fetched = client.get(asset)
            assert fetched.status_code == 200, asset
    chart = client.get("/static/vendor/chart.js-4.6.1/chart.umd.min.js")
    assert chart.headers["content-type"].startswith("text/javascript")
    assert b"Chart.js v4.6.1" in chart.content[:200]
    licence = client.get("/static/vendor/chart.js-4.6.1/LICENSE.md").text
    assert "MIT License" in licence


# --- sign-in -------------------------------------------------------------------------------


@pytest.fixture
def keyed_client(configure, database_url: str) -> Iterator[TestClient]:
    """An in-process app with API_KEY set; redirects are not followed."""
    configure(database_url, API_KEY=KEY)
    from app.main import create_app

    with TestClient(create_app(), follow_redirects=False) as test_client:
        yield test_client


def test_pages_without_the_key_lead_to_the_sign_in_form(keyed_client: TestClient) -> None:
    for path, next_path in (
        ("/", "%2F"),
        ("/ui/jobs/1?tab=metrics", "%2Fui%2Fjobs%2F1%3Ftab%3Dmetrics"),
        ("/ui/submit", "%2Fui%2Fsubmit"),
        ("/ui/experiments/3", "%2Fui%2Fexperiments%2F3"),
        ("/docs", "%2Fdocs"),
        ("/redoc", "%2Fredoc"),
    ):
        for method in ("GET", "HEAD"):
            response = keyed_client.request(method, path)
            assert response.status_code == 303, (method, path, response.text)
            assert response.headers["location"] == f"/ui/login?next={next_path}"
    form = assert_html(keyed_client.get("/ui/login?next=%2Fui%2Fsubmit"))
    assert 'name="api_key"' in form and 'name="next" value="/ui/submit"' in form
    # The form's scripts and styles need no key.
    assert keyed_client.get("/static/dashboard.css").status_code == 200
    assert keyed_client.get("/static/js/common.js").status_code == 200
    # A path that climbs out of /static/ reaches no API route.
    assert keyed_client.get("/static/..%2fjobs").status_code == 404


def test_api_routes_still_answer_json_401(keyed_client: TestClient) -> None:
    for method, path in (
        ("GET", "/jobs"),
        ("GET", "/jobs/1/events"),
        ("GET", "/experiments"),
        ("POST", "/jobs"),
        ("POST", "/"),
        ("GET", "/openapi.json"),
    ):
        response = keyed_client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
        assert response.json() == {
            "error": "unauthorized",
            "detail": "Missing or wrong X-API-Key header.",
        }
    assert keyed_client.get("/jobs", headers={"X-API-Key": KEY}).status_code == 200


def test_a_wrong_key_is_refused(keyed_client: TestClient) -> None:
    for sent, message in ((KEY.upper(), "That is not the key."), ("", "Enter the key.")):
        response = keyed_client.post("/ui/login", data={"api_key": sent, "next": "/"})
        page = assert_html(response, 401)
        assert message in page
        assert "set-cookie" not in response.headers
    assert keyed_client.get("/").status_code == 303
    # A cookie must hold the token derived from the key, not the key, nor another key's token.
    for value in (KEY, sign_in_token("other"), ""):
        keyed_client.cookies.set(SIGN_IN_COOKIE, value)
        assert keyed_client.get("/").status_code == 303, value
        assert keyed_client.get("/jobs").status_code == 401, value


def test_signing_in_sets_a_cookie_that_opens_pages_and_the_api(keyed_client: TestClient) -> None:
    response = keyed_client.post("/ui/login", data={"api_key": KEY, "next": "/ui/submit?kind=job"})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/submit?kind=job"
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert cookie.startswith(f"{SIGN_IN_COOKIE}={sign_in_token(KEY)};")
    assert KEY not in cookie

    assert_html(keyed_client.get("/"))
    assert_html(keyed_client.get("/ui/submit"))
    assert keyed_client.get("/docs").status_code == 200
    assert keyed_client.get("/openapi.json").status_code == 200
    created = keyed_client.post("/jobs", json=SMALL_JOB)  # what the submit form's fetch sends
    assert created.status_code == 202, created.text
    assert keyed_client.get(f"/jobs/{created.json()['id']}").status_code == 200
    assert_html(keyed_client.get(f"/ui/jobs/{created.json()['id']}"))

    signed_out = keyed_client.post("/ui/logout")
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/ui/login"
    assert "max-age=0" in signed_out.headers["set-cookie"].lower()
    assert keyed_client.get("/").status_code == 303
    assert keyed_client.get("/jobs").status_code == 401


@pytest.mark.parametrize(
    "next_path",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "evil", "/\r\nX-Bad: 1"],
)
def test_signing_in_never_leads_to_another_site(keyed_client: TestClient, next_path: str) -> None:
    response = keyed_client.post("/ui/login", data={"api_key": KEY, "next": next_path})
    assert response.status_code == 303 and response.headers["location"] == "/"
    form = keyed_client.get("/ui/login", params={"next": next_path}).text
    assert 'name="next" value="/"' in form


@without_api_key
def test_without_api_key_there_is_nothing_to_sign_in_to(client: TestClient) -> None:
    page = assert_html(client.get("/ui/login?next=%2Fui%2Fsubmit"))
    assert "no API key set" in page and 'href="/ui/submit"' in page
    response = client.post(
        "/ui/login", data={"api_key": "x", "next": "/ui/submit"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/submit"
    assert "set-cookie" not in response.headers
    assert "Sign out" not in assert_html(client.get("/"))


# --- accounts ------------------------------------------------------------------------------


def test_with_accounts_the_jobs_list_shows_and_filters_owners(keyed_client: TestClient) -> None:
    admin = {"X-API-Key": KEY}
    made = keyed_client.post("/users", json={"name": "ada"}, headers=admin)
    assert made.status_code == 201, made.text
    ada = {"Authorization": f"Bearer {made.json()['token']['token']}"}
    adas = keyed_client.post("/jobs", json=SMALL_JOB, headers=ada).json()["id"]
    admins = keyed_client.post("/jobs", json=SMALL_JOB, headers=admin).json()["id"]

    def page(query: str, status: int = 200) -> str:
        return assert_html(keyed_client.get(f"/{query}", headers=ada), status)

    everyone = page("")
    assert listed_job_ids(everyone) == [admins, adas]
    assert '<body data-accounts="on">' in everyone and "<th>Owner</th>" in everyone
    assert '<td class="owner">ada</td>' in everyone and '<td class="owner">admin</td>' in everyone
    assert 'id="signed-in"' in everyone and "/static/js/account.js" in everyone
    assert 'id="mine-filter"' in everyone
    theirs = page("?owner=ada")
    assert listed_job_ids(theirs) == [adas]
    assert 'name="owner" value="ada"' in theirs and 'data-owner="ada"' in theirs
    assert listed_job_ids(page("?owner=ada&status=cancelled")) == []
    assert listed_job_ids(page("?owner=nobody")) == []
    wrong = page("?owner=Not%20A%20Name", 400)
    assert "&#39;Not A Name&#39; is no user&#39;s name" in wrong
    assert listed_job_ids(wrong) == []

    job_page = assert_html(keyed_client.get(f"/ui/jobs/{adas}", headers=ada))
    assert 'id="job-owner">owned by <strong>ada</strong>' in job_page
    assert f'data-job-id="{adas}" data-owner="ada"' in job_page
    # The sign-in form itself says nobody is signed in.
    form = assert_html(keyed_client.get("/ui/login"))
    assert 'id="signed-in"' not in form and "/ui/logout" not in form


def test_without_accounts_the_pages_show_no_owners(client: TestClient) -> None:
    job_id = submit(client)
    jobs = assert_html(client.get("/"))
    assert '<body data-accounts="off">' in jobs
    for absent in ("<th>Owner</th>", 'class="owner"', "signed-in", "mine-filter", "account.js"):
        assert absent not in jobs, absent
    assert 'name="owner"' not in jobs
    assert "job-owner" not in assert_html(client.get(f"/ui/jobs/{job_id}"))
