from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from runs.views import PasswordChangeView, SignUpView, account_delete

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", SignUpView.as_view(), name="signup"),
    path("accounts/delete/", account_delete, name="account_delete"),
    path("accounts/password/", PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("", include("runs.urls")),
]
