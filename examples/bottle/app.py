"""A small Bottle app: a SimpleTemplate view, JSON, a URL parameter, a form
POST and a JSON 404 handler."""

import json
import os

import bottle

# Bottle looks templates up relative to the working directory ('./views/').
# rsgi-wasm starts the app in its first -p directory, as gunicorn --chdir
# would, but a server started elsewhere need not: point it here explicitly.
bottle.TEMPLATE_PATH.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "views"))

app = bottle.Bottle()


@app.get("/")
def index():
    return bottle.template("index", title="rsgi-wasm", items=["sandboxed", "streamed", "pooled"])


@app.get("/api/info")
def info():
    # A dict return value is serialised to JSON by Bottle's JSON plugin.
    return {"framework": "bottle", "version": bottle.__version__, "method": bottle.request.method}


@app.get("/hello/<name>")
def hello(name):
    bottle.response.content_type = "text/plain; charset=utf-8"
    return f"Hello, {name}!\n"


@app.post("/greet")
def greet():
    # getunicode: Bottle's request.forms values are latin-1 decoded native
    # strings; this gives the UTF-8 text the browser sent.
    name = bottle.request.forms.getunicode("name") or "nobody"
    return bottle.template("greet", name=name)


@app.error(404)
def not_found(error):
    bottle.response.content_type = "application/json"
    return json.dumps({"error": "not found", "path": bottle.request.path})
