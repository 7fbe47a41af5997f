// tokens.js — the CircuitsVis-like token view: the prompt as text, coloured by the
// selected head's attention from the hovered token, or by the head's direct logit
// attribution at each position.
function drawTokens(){
  const p=D.prompts[S.prompt],box=$('tv');box.innerHTML='';
  p.labels.forEach((s,i)=>{
    const sp=el('span',{'data-i':i,title:'position '+i},box,s.replace(/\n/g,'⏎'));
    sp.addEventListener('mouseover',ev=>{S.hover=i;colourTokens();if(S.mode==='dla')showTip(ev,dlaText(i));});
    sp.addEventListener('mouseleave',hideTip);
  });
  $('tv-src').textContent='Attention: '+p.source_patterns+'; DLA: '+p.source_dla+'.';
  colourTokens();
}
function headDla(p){const [l,h]=S.head;return p.dla?p.dla.rows[1+l*H+h]:p.tokens.map(()=>0);}
function dlaText(i){const p=D.prompts[S.prompt],v=headDla(p)[i];return p.dla?headName(S.head[0],S.head[1])+' at '+i+' '+p.labels[i]+': '+fmt(v)+' on the logit of '+p.dla.targets[i]:'no DLA for this prompt';}
function colourTokens(){
  const p=D.prompts[S.prompt],A=patternsOf(p),[l,h]=S.head,spans=$('tv').children,i=S.hover,lg=$('tv-legend');
  lg.innerHTML='';
  if(S.mode==='dla'){
    const v=headDla(p),m=Math.max(1e-9,...v.map(Math.abs));
    for(let j=0;j<spans.length;j++){spans[j].style.background=css(div(v[j]/m));spans[j].classList.toggle('hov',j===i);}
    legend(lg,'div',0,m,'DLA of '+headName(l,h));
    $('tv-status').textContent=i>=0?dlaText(i):'hover a token';
    $('tv').dataset.hovered=i;return;
  }
  for(let j=0;j<spans.length;j++){
    let bg='';
    if(i>=0&&j<=i){const a=att(A,l,h,Math.floor(i/A.pool),Math.floor(j/A.pool))/(A.pool>1?A.pool:1);bg=css(seq(a));}
    spans[j].style.background=bg;spans[j].classList.toggle('hov',j===i);
  }
  legend(lg,'seq',0,1,'attention from the hovered token');
  if(i>=0){
    const keys=[];for(let j=0;j<=i;j++)keys.push([att(A,l,h,Math.floor(i/A.pool),Math.floor(j/A.pool)),j]);
    keys.sort((a,b)=>b[0]-a[0]);
    $('tv-status').textContent=headName(l,h)+' from position '+i+' '+p.labels[i]+': '+keys.slice(0,3).map(k=>k[1]+' '+p.labels[k[1]]+' '+k[0].toFixed(2)).join(', ');
  } else $('tv-status').textContent='hover a token';
  $('tv').dataset.hovered=i;
}
document.querySelectorAll('input[name=tv-mode]').forEach(r=>r.addEventListener('change',()=>{S.mode=r.value;colourTokens();}));
