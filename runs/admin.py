from django.contrib import admin

from runs.models import Conversation, Message, Run

admin.site.register(Conversation)
admin.site.register(Run)
admin.site.register(Message)
