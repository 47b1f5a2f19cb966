from django.urls import path

from runs import api, views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat_page, name="conversation"),
    path("send/", views.chat_form_send, name="chat_form_send"),
    path(
        "c/<uuid:conversation_id>/forget/",
        views.conversation_forget_form,
        name="conversation_forget",
    ),
    path(
        "c/<uuid:conversation_id>/delete/",
        views.conversation_delete_form,
        name="conversation_delete",
    ),
    path(
        "c/<uuid:conversation_id>/rename/",
        views.conversation_rename_form,
        name="conversation_rename",
    ),
    path(
        "c/<uuid:conversation_id>/regenerate/",
        views.chat_form_regenerate,
        name="chat_form_regenerate",
    ),
    path(
        "c/<uuid:conversation_id>/continue/",
        views.chat_form_continue,
        name="chat_form_continue",
    ),
    path("c/<uuid:conversation_id>/edit/", views.chat_form_edit, name="chat_form_edit"),
    path(
        "c/<uuid:conversation_id>/feedback/",
        views.chat_form_feedback,
        name="chat_form_feedback",
    ),
    path(
        "c/<uuid:conversation_id>/download/",
        views.conversation_download,
        name="conversation_download",
    ),
    path(
        "c/<uuid:conversation_id>/share/",
        views.conversation_share_form,
        name="conversation_share",
    ),
    path("download/", views.conversations_download, name="conversations_download"),
    path("s/<slug:token>/", views.shared_conversation, name="shared"),
    path("healthz", views.healthz, name="healthz"),
    path("api/chat/", api.chat, name="api_chat"),
    path("api/conversations/", api.conversations, name="api_conversations"),
    path("api/conversations/<uuid:conversation_id>/", api.conversation, name="api_conversation"),
    path(
        "api/conversations/<uuid:conversation_id>/memory/",
        api.conversation_memory,
        name="api_conversation_memory",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/forget/",
        api.conversation_forget,
        name="api_conversation_forget",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/regenerate/",
        api.conversation_regenerate,
        name="api_conversation_regenerate",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/continue/",
        api.conversation_continue,
        name="api_conversation_continue",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/share/",
        api.conversation_share,
        name="api_conversation_share",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/messages/<uuid:message_id>/feedback/",
        api.message_feedback,
        name="api_message_feedback",
    ),
    path("api/<path:rest>", api.not_found),
]
