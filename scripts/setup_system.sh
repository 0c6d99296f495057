#!/usr/bin/env bash
# Installs the system packages some tests use, where Debian's apt-get is available and we are root (CI's fresh
# machine); elsewhere it says what it skipped and carries on. A no-op when they are already installed.
#   orthanc, orthanc-dicomweb: a local DICOMweb PACS for the MONAI Label app's tests (tests/apps/)
#   dicom3tools: dciodvfy, the DICOM validator that checks the DICOM SEG files (tests/dicom/)
#   chromium, chromium-driver: a headless browser and its WebDriver for the browser page's tests (tests/web/)
set -uo pipefail

packages=(orthanc orthanc-dicomweb dicom3tools chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "[setup] system packages not installed (${missing[*]}): needs apt-get as root; the tests that use them skip"
    exit 0
fi
echo "[setup] installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "[setup] apt-get could not install ${missing[*]}; the tests that use them skip"
fi
# the Debian package starts Orthanc as a service where there is an init system; the tests start their own
exit 0
