"""A small Flask app: templates, JSON, forms, redirects, streaming."""

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for

app = Flask(__name__)


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
