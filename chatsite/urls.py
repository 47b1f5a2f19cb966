from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from runs.views import (
    PasswordChangeView,
    PasswordResetConfirmView,
    PasswordResetView,
    SignInView,
    SignUpView,
    account_delete,
    account_email,
    account_email_confirm,
)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", SignUpView.as_view(), name="signup"),
    path("accounts/delete/", account_delete, name="account_delete"),
    path("accounts/email/", account_email, name="account_email"),
    path(
        "accounts/email/confirm/<str:token>/",
        account_email_confirm,
        name="account_email_confirm",
    ),
    path("accounts/password/", PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("accounts/password/reset/", PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("", include("runs.urls")),
]
