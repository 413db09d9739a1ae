<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{title}}</title></head>
<body>
<h1>Hello from {{title}}</h1>
<ul>
% for item in items:
  <li>{{item}}</li>
% end
</ul>
<form method="post" action="/greet">
  <input name="name" placeholder="your name">
  <button>Greet</button>
</form>
</body>
</html>
