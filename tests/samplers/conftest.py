import pytest


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def compiled(request):
    """Runs a test both eagerly and inside the backend's compiler."""
    return request.param
