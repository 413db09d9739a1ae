import re

from django.test import Client, TestCase

from .models import Note


class NotesTests(TestCase):
    # The test database is SQLite in memory, so these run natively
    # (`python manage.py test`) without the /data grant.

    def test_health(self):
        r = self.client.get('/health/')
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.content, b'ok')

    def test_add_with_csrf_then_list(self):
        client = Client(enforce_csrf_checks=True)
        page = client.get('/')
        self.assertContains(page, 'No notes yet')
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
        self.assertEqual(client.post('/notes/add/', {'text': 'no token'}).status_code, 403)
        r = client.post('/notes/add/', {'text': 'first', 'csrfmiddlewaretoken': token})
        self.assertRedirects(r, '/')
        client.post('/notes/add/', {'text': 'second', 'csrfmiddlewaretoken': token})
        body = client.get('/').text
        self.assertLess(body.index('second'), body.index('first'))

    def test_invalid_note_is_400(self):
        r = self.client.post('/notes/add/', {'text': ''})
        self.assertContains(r, 'This field is required.', status_code=400)
        self.assertEqual(Note.objects.count(), 0)

    def test_api(self):
        Note.objects.create(text='hello')
        notes = self.client.get('/api/notes/').json()['notes']
        self.assertEqual([n['text'] for n in notes], ['hello'])
        self.assertIn('T', notes[0]['created'])

    def test_admin_login_uses_static(self):
        self.assertContains(self.client.get('/admin/login/'), '/static/admin/css/')
