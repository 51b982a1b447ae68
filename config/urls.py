from django.contrib import admin
from django.urls import path

admin.site.site_header = "Billing operator console"
admin.site.site_title = "Billing operator console"
admin.site.index_title = "Operations"

urlpatterns = [
    path("admin/", admin.site.urls),
]
