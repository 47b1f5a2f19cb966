from django.urls import path

from runs import views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat_page, name="conversation"),
    path("send/", views.chat_form_send, name="chat_form_send"),
    path("healthz", views.healthz, name="healthz"),
]
