from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from .forms import NoteForm
from .models import Note


def _index(request, form, status=200):
    notes = Note.objects.all()  # newest first (Meta.ordering)
    return render(request, 'notes/index.html', {'notes': notes, 'form': form}, status=status)


@require_GET
def index(request):
    return _index(request, NoteForm())


@require_POST
def add(request):
    form = NoteForm(request.POST)
    if not form.is_valid():
        return _index(request, form, status=400)
    form.save()
    return redirect('notes:index')


@require_GET
def api_notes(request):
    notes = [
        {'id': n.id, 'text': n.text, 'created': n.created.isoformat()}
        for n in Note.objects.all()
    ]
    return JsonResponse({'notes': notes})


def health(request):
    # No database access: safe as a build-time warm-up path, where the
    # granted /data directory does not exist yet.
    return HttpResponse('ok', content_type='text/plain')
