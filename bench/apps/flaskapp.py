"""flask-hello (GET /) and flask-json (POST /json)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!"


@app.route("/json", methods=["POST"])
def echo_json():
    data = request.get_json(force=True)
    return jsonify(ok=True, keys=sorted(data), n=len(data))
