# povfarm render node on Windows, with POV-Ray for Windows (pvengine64.exe) and povfarm.pyz.
# Needs Python 3.10+ from python.org (the `py` launcher) and POV-Ray for Windows 3.7. Nothing else.
#
#   1. On the controller's box:  povfarm token show --role node > node.token   (copy it here)
#      and build the one-file node: bash scripts/build_pyz.sh                 (copy povfarm.pyz here)
#   2. Edit the four settings below, then run in PowerShell:
#        powershell -ExecutionPolicy Bypass -File .\povfarm-node.ps1
#   3. To start it with Windows, see install-task.ps1 (Task Scheduler) in this folder.

$Controller = "http://controller.example:8642"     # or https://... with -CaFile below
$Here       = Split-Path -Parent $MyInvocation.MyCommand.Path
$Pyz        = Join-Path $Here "povfarm.pyz"
$TokenFile  = Join-Path $Here "node.token"
$PovRay     = "C:\Program Files\POV-Ray\v3.7\bin\pvengine64.exe"   # or a console povray.exe
$WorkDir    = Join-Path $env:LOCALAPPDATA "povfarm-node"

# One POV-Ray at a time: whether several pvengine processes can run side by side has not been
# checked on a real Windows box (a GUI set to keep a single instance would hand its work to the
# first one and exit, which the node reports as a strip with no image). Raise it once you have seen
# two strips render at once in `povfarm nodes`.
$Slots = 1

& py -3 $Pyz node `
    --controller $Controller `
    --token-file $TokenFile `
    --povray $PovRay `
    --slots $Slots `
    --work-dir $WorkDir `
    --strip-timeout 3600
exit $LASTEXITCODE
