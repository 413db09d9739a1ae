"""A small Flask app: templates, JSON, forms, redirects, streaming, a session
cookie and a file upload."""

import hashlib

from flask import Flask, Response, jsonify, redirect, render_template, request, session, url_for


app = Flask(__name__)
# Signs the session cookie. A constant development key: the module is
# imported at build time (empty environment), so a key read from os.environ
# here would be baked into the component anyway. Replace it before deploying.
app.secret_key = "dev-only-insecure-key-rsgi-wasm-flask-example"


@app.route("/")
def index():
    return render_template("index.html", title="rsgi-wasm", items=["sandboxed", "streamed", "pooled"])


@app.route("/hello/<name>")
def hello(name):
    return f"Hello, {name}!\n"


@app.route("/api/echo", methods=["POST"])
def echo():
    data = request.get_json(force=True, silent=True)
    if data is None:
        return jsonify(error="body is not JSON"), 400
    return jsonify(received=data, length=request.content_length)


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        return redirect(url_for("hello", name=request.form.get("name", "nobody")))
    return '<form method="post"><input name="name"><button>Send</button></form>'


@app.route("/stream")
def stream():
    def generate():
        for i in range(5):
            yield f"line {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.route("/counter")
def counter():
    # Stored client-side in the signed cookie, so it survives across
    # instances of the pool (and --isolation request).
    session["count"] = session.get("count", 0) + 1
    return f"{session['count']}\n", {"Content-Type": "text/plain; charset=utf-8"}


@app.route("/upload", methods=["GET", "POST"])
def upload():
    if request.method == "GET":
        return render_template("upload.html", title="Upload")
    file = request.files.get("file")
    if file is None or not file.filename:  # a browser sends "" if none was chosen
        return jsonify(error="no file field named 'file'"), 400
    # Hash in blocks: the upload may be large (up to --max-body).
    digest = hashlib.sha256()
    size = 0
    while block := file.stream.read(64 * 1024):
        digest.update(block)
        size += len(block)
    return jsonify(filename=file.filename, size=size, sha256=digest.hexdigest())
