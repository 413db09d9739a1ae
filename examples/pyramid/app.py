"""A small Pyramid app: Jinja2 templates (pyramid_jinja2), the JSON
renderer, a URL parameter, a form POST, a multipart upload (WebOb parses it
with `cgi.FieldStorage`, from legacy-cgi on Python 3.13+) and a JSON 404."""

import hashlib
from importlib.metadata import version

from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.view import notfound_view_config, view_config


@view_config(route_name="index", renderer="templates/index.jinja2")
def index(request):
    return {"title": "rsgi-wasm", "items": ["sandboxed", "streamed", "pooled"]}


@view_config(route_name="info", renderer="json")
def info(request):
    return {"framework": "pyramid", "version": version("pyramid"), "method": request.method}


@view_config(route_name="hello")
def hello(request):
    return Response(f"Hello, {request.matchdict['name']}!\n", content_type="text/plain", charset="utf-8")


@view_config(route_name="greet", request_method="POST", renderer="templates/greet.jinja2")
def greet(request):
    return {"name": request.POST.get("name") or "nobody"}


@view_config(route_name="upload", request_method="POST", renderer="json")
def upload(request):
    field = request.POST["file"]
    data = field.file.read()
    return {"filename": field.filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@notfound_view_config(renderer="json")
def not_found(request):
    request.response.status = 404
    return {"error": "not found", "path": request.path}


with Configurator() as config:
    config.include("pyramid_jinja2")
    config.add_route("index", "/")
    config.add_route("info", "/api/info")
    config.add_route("hello", "/hello/{name}")
    config.add_route("greet", "/greet")
    config.add_route("upload", "/upload")
    config.scan(__name__)
    app = config.make_wsgi_app()
