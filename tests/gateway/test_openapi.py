"""/openapi.json describes every route, with the limits the code enforces."""

from __future__ import annotations

import re


def test_every_route_is_documented(client):
    spec = client.get("/openapi.json").get_json()
    app = client.application
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint != "static"}
    assert routes == set(spec["paths"])
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        documented = {m.upper() for m in spec["paths"][path] if m != "parameters"}
        assert rule.methods - {"HEAD", "OPTIONS"} <= documented, path


def test_the_request_schema_carries_the_configured_limits(make_client):
    spec = make_client(max_prompt_length=77, max_steps=40).get("/openapi.json").get_json()
    schema = spec["components"]["schemas"]["GenerateRequest"]
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["prompt"]["maxLength"] == 77
    steps = schema["properties"]["steps"]["anyOf"][0]
    assert steps["maximum"] == 40


def test_the_docs_page_is_swagger_ui_from_the_gateways_own_files(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in page and "//" not in page.replace("http://", "").split("<body>")[1]
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000
    assert b"/openapi.json" in client.get("/docs/assets/docs.js").data
    for name in ("../../../../etc/passwd", "index.template.html", "nope.js"):
        assert client.get(f"/docs/assets/{name}").status_code == 404
