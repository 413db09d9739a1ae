<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Greeting</title></head>
<body>
<p class="greeting">Nice to meet you, {{name}}!</p>
<p><a href="/">back</a></p>
</body>
</html>
