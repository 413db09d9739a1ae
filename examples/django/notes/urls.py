from django.urls import path

from . import views

app_name = 'notes'
urlpatterns = [
    path('', views.index, name='index'),
    path('notes/add/', views.add, name='add'),
    path('api/notes/', views.api_notes, name='api'),
    path('health/', views.health, name='health'),
]
