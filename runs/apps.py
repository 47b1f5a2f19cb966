from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "runs"
    verbose_name = "Chat"

    def ready(self) -> None:
        # Registers `contains_folded`; connects the sign-in adoption.
        from runs import lookups, signals  # noqa: F401
