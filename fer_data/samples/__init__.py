"""Generated look-alikes of the raw datasets (`fer sample-data`): images.py for the image releases,
video.py for the clip and AU releases, each in its exact native layout, for the tests and the demo."""
