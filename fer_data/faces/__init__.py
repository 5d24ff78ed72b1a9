"""Face geometry shared by adapters (given landmarks) and the detectors/aligners."""
