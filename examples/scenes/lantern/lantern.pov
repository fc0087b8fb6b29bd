// A brass lantern with a lit candle beside a labelled crate on a checkered floor.
// povfarm's own example scene: a local #include and a local image map, no random jitter.
#version 3.7;

#include "colors.inc"
#include "textures.inc"
#include "lantern.inc"

global_settings { assumed_gamma 1.0 max_trace_level 8 }

camera {
  location <2.6, 2.4, -5.2>
  look_at <0.2, 0.95, 0>
  angle 44
}

// warm evening key light and a faint cool fill; both point lights, so no jitter
light_source { <-6, 9, -7> color rgb <1.0, 0.92, 0.80> * 0.8 }
light_source { <7, 4, -3> color rgb <0.55, 0.65, 0.85> * 0.25 shadowless }
// the candle's light
light_source { <0, 0.9, 0> color rgb <1.0, 0.70, 0.35> * 1.3 fade_distance 1.2 fade_power 2 }

sky_sphere {
  pigment { gradient y color_map { [0 rgb <0.85, 0.62, 0.45>] [0.35 rgb <0.30, 0.32, 0.55>] [1 rgb <0.08, 0.10, 0.25>] } }
}

plane {
  y, 0
  texture {
    pigment { checker color rgb <0.80, 0.78, 0.72> color rgb <0.18, 0.20, 0.24> scale 0.8 }
    finish { ambient 0 diffuse 0.8 reflection 0.12 }
  }
}

object { Lantern rotate -20*y }

// a crate with the label on the side facing the camera
#declare Crate = box { <-0.6, 0, -0.6>, <0.6, 1.2, 0.6> }
union {
  object { Crate texture { T_Crate } }
  box { <-0.42, 0.18, -0.601>, <0.42, 1.02, -0.6>
        pigment { image_map { png "label.png" interpolate 2 } scale <0.84, 0.84, 1> translate <-0.42, 0.18, 0> }
        finish { ambient 0 diffuse 0.85 } }
  rotate -32*y translate <-1.75, 0, 0.7>
}

// a few things on the floor
sphere { <1.45, 0.32, -0.6>, 0.32 texture { T_Brass } }
sphere { <0.95, 0.2, -1.2>, 0.2 texture { pigment { rgb <0.55, 0.08, 0.06> } finish { ambient 0 diffuse 0.7 specular 0.5 roughness 0.01 reflection 0.08 } } }
cylinder { <-0.9, 0, -1.5>, <-0.9, 0.08, -1.5>, 0.45 texture { Silver_Metal } }
